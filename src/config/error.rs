//! Configuration errors a person can act on: one line naming the key, the
//! value that was given (unless it may be a secret), where it came from (an
//! environment variable or the file) and what is allowed. The config crate's
//! own errors are translated here, so no Rust type name ever reaches the
//! operator.

use std::path::Path;

use super::validate::range_of;

/// A configuration problem, naming the key at fault.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: `{key}`: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub(crate) fn new(key: &str, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// The environment variable that sets `key` (`server.listen` ->
/// `IMAGE_GATEWAY__SERVER__LISTEN`).
pub(crate) fn env_name(key: &str) -> String {
    format!(
        "IMAGE_GATEWAY__{}",
        key.to_ascii_uppercase().replace('.', "__")
    )
}

/// Whether a key's value may be a secret or carry one (keys, URLs that can
/// hold a password): such values are never repeated in a message.
fn may_be_secret(key: &str) -> bool {
    let last = key.rsplit('.').next().unwrap_or(key);
    ["key", "password", "secret", "token", "url"]
        .iter()
        .any(|word| last.contains(word))
}

/// Where the values being loaded came from, to say which one is at fault.
pub(super) struct Sources<'a> {
    pub file: Option<&'a Path>,
    pub env: &'a config::Map<String, String>,
}

impl Sources<'_> {
    /// ` (set by IMAGE_GATEWAY__X)`, ` (in FILE)` or nothing.
    fn origin(&self, key: &str) -> String {
        let var = env_name(key);
        if self.env.contains_key(&var) {
            format!(" (set by {var})")
        } else if let Some(file) = self.file {
            format!(" (in {})", file.display())
        } else {
            String::new()
        }
    }

    /// Translate an error of the config crate.
    pub(super) fn translate(&self, e: config::ConfigError) -> ConfigError {
        match e {
            config::ConfigError::Type {
                unexpected,
                expected,
                key,
                ..
            } => {
                let key = key.unwrap_or_else(|| "configuration".into());
                let given = given_value(&unexpected.to_string());
                self.bad_value(&key, &given, expected)
            }
            config::ConfigError::At { error, key, .. } => {
                let key = key.unwrap_or_else(|| "configuration".into());
                match *error {
                    config::ConfigError::Type {
                        unexpected,
                        expected,
                        ..
                    } => self.bad_value(&key, &given_value(&unexpected.to_string()), expected),
                    other => self.message_at(&key, &other.to_string()),
                }
            }
            config::ConfigError::Message(text) => self.message_at("", &text),
            config::ConfigError::NotFound(key) => {
                let key = dotted(&key);
                let origin = self.origin(&key);
                ConfigError::new(&key, format!("missing: this key is required{origin}"))
            }
            config::ConfigError::FileParse { uri, cause } => {
                let file = match (self.file, uri) {
                    (Some(path), _) => path.display().to_string(),
                    (None, Some(uri)) => uri,
                    (None, None) => "the configuration file".into(),
                };
                ConfigError::new(
                    "--config",
                    format!("cannot parse {file}: {}", one_line(&cause.to_string())),
                )
            }
            config::ConfigError::Foreign(cause) => {
                ConfigError::new("--config", one_line(&cause.to_string()))
            }
            other => ConfigError::new("configuration", one_line(&other.to_string())),
        }
    }

    /// A value of the wrong type: a word for a number, `-1` for a count.
    fn bad_value(&self, key: &str, given: &str, expected: &str) -> ConfigError {
        let origin = self.origin(key);
        let shown = if may_be_secret(key) {
            "the value".to_owned()
        } else {
            format!("`{given}`")
        };
        let allowed = match range_of(key) {
            Some(range) => range.describe(),
            None if expected.contains("bool") => "`true` or `false`".to_owned(),
            None if expected.contains("integer") => "a whole number of at least 0".to_owned(),
            None => expected.to_owned(),
        };
        ConfigError::new(
            key,
            format!("{shown} is not allowed{origin}; allowed: {allowed}"),
        )
    }

    /// A message from serde (a word outside a choice, an unknown field) at
    /// `parent` (empty at the top level).
    fn message_at(&self, parent: &str, text: &str) -> ConfigError {
        let text = one_line(text);
        if let Some(rest) = text.strip_prefix("unknown field `")
            && let Some((field, expected)) = rest.split_once('`')
        {
            let key = if parent.is_empty() {
                field.to_owned()
            } else {
                format!("{parent}.{field}")
            };
            let origin = self.origin(&key);
            let known = expected
                .trim_start_matches(',')
                .trim()
                .trim_start_matches("expected ")
                .trim_start_matches("one of ");
            return ConfigError::new(
                &key,
                format!("no such setting{origin}; known here: {known}"),
            );
        }
        if text.contains("did not match any variant") {
            let origin = self.origin(parent);
            return ConfigError::new(parent, format!("the value has the wrong type{origin}"));
        }
        let key = if parent.is_empty() {
            "configuration"
        } else {
            parent
        };
        let origin = self.origin(key);
        ConfigError::new(key, format!("{text}{origin}"))
    }
}

/// The config crate writes `models.catalog[0]endpoint`: add the dot.
fn dotted(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 2);
    let mut after_index = false;
    for c in key.chars() {
        if after_index && c != '[' && c != '.' {
            out.push('.');
        }
        after_index = c == ']';
        out.push(c);
    }
    out
}

/// The value inside the config crate's description of what it found:
/// `string "-1"` -> `-1`, ``64-bit integer `-1` `` -> `-1`.
fn given_value(unexpected: &str) -> String {
    if let Some(quoted) = unexpected.strip_prefix("string ") {
        return quoted
            .strip_prefix('"')
            .and_then(|q| q.strip_suffix('"'))
            .unwrap_or(quoted)
            .to_owned();
    }
    match unexpected.split('`').nth(1) {
        Some(value) => value.to_owned(),
        None => unexpected.to_owned(),
    }
}

/// A multi-line message (a TOML parse error with its excerpt) as one line:
/// its first line and its last.
fn one_line(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('|') && !l.chars().all(|c| c == '^'))
        .collect();
    match lines.as_slice() {
        [] => text.trim().to_owned(),
        [one] => (*one).to_owned(),
        [first, .., last] => format!("{first}: {last}"),
    }
}

/// Variables that start with `IMAGE_GATEWAY_` but are not settings: the
/// `--config` flag's, and those this repository's test scripts read.
const NOT_SETTINGS: [&str; 3] = [
    "IMAGE_GATEWAY_CONFIG",
    "IMAGE_GATEWAY_REQUIRE_REDIS",
    "IMAGE_GATEWAY_BIN",
];

/// A variable `IMAGE_GATEWAY_...` with one underscore after the prefix is
/// not read. When it spells a setting (`IMAGE_GATEWAY_AUTH__API_KEYS`, which
/// would silently leave the gateway open) start-up fails; any other such
/// name is a warning.
pub(super) fn check_single_underscore(
    var: &str,
    known_keys: &[String],
) -> Result<Option<String>, ConfigError> {
    if NOT_SETTINGS.contains(&var) {
        return Ok(None);
    }
    let Some(rest) = var.strip_prefix("IMAGE_GATEWAY_") else {
        return Ok(None);
    };
    if rest.starts_with('_') {
        return Ok(None);
    }
    let squash = |s: &str| {
        s.chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .map(|c| c.to_ascii_lowercase())
            .collect::<String>()
    };
    let spelled = squash(rest);
    if let Some(key) = known_keys.iter().find(|k| squash(k) == spelled) {
        return Err(ConfigError::new(
            key,
            format!(
                "the environment variable {var} is not read (one underscore after IMAGE_GATEWAY); write {}",
                env_name(key)
            ),
        ));
    }
    Ok(Some(format!(
        "the environment variable {var} is ignored: it is not a setting (settings are IMAGE_GATEWAY__SECTION__KEY, two underscores)"
    )))
}
