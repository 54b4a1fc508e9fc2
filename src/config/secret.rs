//! Values that must never be printed: secrets and URLs that carry them.

use std::fmt;

use serde::{Deserialize, Serialize, Serializer};

/// A value that must never be printed: `Debug`, `Display` and `Serialize`
/// all write `[redacted]`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[redacted]")
    }
}

/// A Redis URL whose password (and username) never appear in `Debug`,
/// `Display` or `Serialize` output: `redis://:[redacted]@host:6379/0`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct RedisUrl(String);

impl RedisUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }
    /// The URL with its credentials, for connecting only.
    pub fn expose(&self) -> &str {
        self.0.trim()
    }
    pub fn is_set(&self) -> bool {
        !self.expose().is_empty()
    }
    /// The URL with any userinfo replaced by `[redacted]`.
    pub fn redacted(&self) -> String {
        let url = self.expose();
        let Some((scheme, rest)) = url.split_once("://") else {
            // Not a URL we can take apart: print nothing of it.
            return if url.is_empty() {
                String::new()
            } else {
                "[redacted]".into()
            };
        };
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        match rest[..authority_end].rfind('@') {
            Some(at) => format!("{scheme}://[redacted]{}", &rest[at..]),
            None => {
                // A password can also travel as a query parameter.
                if rest.contains("password=") || rest.contains("user=") {
                    format!("{scheme}://{}?[redacted]", &rest[..authority_end])
                } else {
                    url.to_owned()
                }
            }
        }
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for RedisUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}
