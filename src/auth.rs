//! Client API keys: `Authorization: Bearer <key>` checked against
//! `auth.api_keys`. Keys are held only as SHA-256 digests and compared in
//! constant time; a configured entry may itself be `sha256:<hex>`.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Secret;
use crate::error::ApiError;

/// Who is calling: the SHA-256 of their key. Used to scope the cache and the
/// rate limits per key; never logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientId(pub [u8; 32]);

pub struct Auth {
    digests: Vec<[u8; 32]>,
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl Auth {
    /// From validated settings (a `sha256:` entry has 64 hex digits).
    pub fn new(keys: &[Secret]) -> Self {
        let digests = keys
            .iter()
            .map(|k| match k.expose().strip_prefix("sha256:") {
                Some(hex_digest) => {
                    let mut out = [0u8; 32];
                    if hex::decode_to_slice(hex_digest, &mut out).is_err() {
                        // Unreachable after validation; an unmatchable digest is safe.
                        out = digest(k.expose());
                    }
                    out
                }
                None => digest(k.expose()),
            })
            .collect();
        Self { digests }
    }

    /// No keys configured: anyone may call.
    pub fn is_open(&self) -> bool {
        self.digests.is_empty()
    }

    /// Check an `Authorization` header value.
    pub fn check(&self, authorization: Option<&[u8]>) -> Result<ClientId, ApiError> {
        let Some(value) = authorization else {
            return Err(ApiError::Unauthorized {
                message: "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            });
        };
        let key = value
            .strip_prefix(b"Bearer ")
            .or_else(|| value.strip_prefix(b"bearer "))
            .map(|k| k.trim_ascii())
            .filter(|k| !k.is_empty())
            .ok_or(ApiError::Unauthorized {
                message: "The Authorization header must be `Bearer YOUR_KEY`.",
            })?;
        let presented: [u8; 32] = Sha256::digest(key).into();
        // Compare against every key without stopping early.
        let mut found = subtle::Choice::from(0u8);
        for d in &self.digests {
            found |= d.ct_eq(&presented);
        }
        if bool::from(found) {
            Ok(ClientId(presented))
        } else {
            Err(ApiError::Unauthorized {
                message: "Incorrect API key provided.",
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_hashed_keys_are_accepted_and_others_refused() {
        let hashed = format!("sha256:{}", hex::encode(digest("sk-hashed")));
        let auth = Auth::new(&[Secret::new("sk-plain"), Secret::new(hashed)]);
        assert!(auth.check(Some(b"Bearer sk-plain")).is_ok());
        assert!(auth.check(Some(b"Bearer sk-hashed")).is_ok());
        assert!(auth.check(Some(b"bearer sk-plain")).is_ok());
        assert_eq!(
            auth.check(Some(b"Bearer sk-plain")).unwrap(),
            auth.check(Some(b"Bearer  sk-plain ")).unwrap()
        );
        for bad in [
            &b"Bearer sk-other"[..],
            b"Bearer ",
            b"Basic sk-plain",
            b"sk-plain",
            b"",
        ] {
            assert!(matches!(
                auth.check(Some(bad)),
                Err(ApiError::Unauthorized { .. })
            ));
        }
        assert!(auth.check(None).is_err());
        // The hash itself is not a key.
        let raw_hash = format!("Bearer {}", hex::encode(digest("sk-hashed")));
        assert!(auth.check(Some(raw_hash.as_bytes())).is_err());
    }
}
