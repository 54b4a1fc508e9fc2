//! Layered configuration: built-in defaults, then an optional TOML file, then
//! `IMAGE_GATEWAY__SECTION__KEY` environment variables, then `FAL_KEY`.
//!
//! The names `server.listen`, `backend`, `fal.queue_url`, `fal.run_url` and
//! `auth.api_keys` are fixed by the design and relied on by the deploy files.
//! Every key here must also appear in `deploy/config.example.toml` (a test checks).

use serde::{Deserialize, Serialize};

use crate::domain::BackendKind;

mod models;
mod secret;
mod sections;
#[cfg(test)]
mod tests;
mod validate;

pub use models::{ModelEntry, ModelSettings, OPENAI_MODEL_ALIASES};
pub use secret::{RedisUrl, Secret};
pub use sections::{
    AuthSettings, CacheScope, CacheSettings, FalMode, FalSettings, FileSettings, LimitSettings,
    LocalSettings, LogFormat, LogSettings, MetricsSettings, ServerSettings,
};

/// Which image backend serves generations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// `fal` when a fal key is configured, otherwise `local` (with a warning).
    #[default]
    Auto,
    Fal,
    Local,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// `auto`, `fal` or `local`.
    pub backend: BackendChoice,
    pub server: ServerSettings,
    pub auth: AuthSettings,
    pub fal: FalSettings,
    pub models: ModelSettings,
    pub cache: CacheSettings,
    pub files: FileSettings,
    pub local: LocalSettings,
    pub limits: LimitSettings,
    pub metrics: MetricsSettings,
    pub log: LogSettings,
}

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

impl Settings {
    /// Load defaults, then `file` (if any), then the environment.
    pub fn load(file: Option<&std::path::Path>) -> Result<Self, ConfigError> {
        let vars: Vec<(String, String)> = std::env::vars().collect();
        Self::load_from(file, vars)
    }

    /// Like [`Settings::load`] with an explicit environment (tests use this).
    pub fn load_from(
        file: Option<&std::path::Path>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut env = config::Map::new();
        let mut fal_key = None;
        for (k, v) in vars {
            if k == "FAL_KEY" {
                if !v.trim().is_empty() {
                    fal_key = Some(Secret::new(v.trim()));
                }
            } else if k.starts_with("IMAGE_GATEWAY__") {
                env.insert(k, v);
            }
        }
        let mut builder = config::Config::builder();
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::new(
                    "--config",
                    format!("file {} does not exist", path.display()),
                ));
            }
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        builder = builder.add_source(
            config::Environment::with_prefix("IMAGE_GATEWAY")
                .prefix_separator("__")
                .separator("__")
                .source(Some(env)),
        );
        let cfg = builder.build().map_err(config_error)?;
        let mut settings: Settings = cfg.try_deserialize().map_err(config_error)?;
        if fal_key.is_some() {
            settings.fal.key = fal_key;
        }
        if settings
            .fal
            .key
            .as_ref()
            .is_some_and(|k| k.expose().trim().is_empty())
        {
            settings.fal.key = None;
        }
        settings.validate()?;
        Ok(settings)
    }

    /// The backend in use once `auto` is resolved.
    pub fn backend_kind(&self) -> BackendKind {
        match self.backend {
            BackendChoice::Fal => BackendKind::Fal,
            BackendChoice::Local => BackendKind::Local,
            BackendChoice::Auto if self.fal.key.is_some() => BackendKind::Fal,
            BackendChoice::Auto => BackendKind::Local,
        }
    }

    /// The effective configuration as TOML, secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

fn config_error(e: config::ConfigError) -> ConfigError {
    // The config crate's messages name the key ("... for key `server.listen`").
    let text = e.to_string();
    let key = text
        .split("for key `")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .map(str::to_owned)
        .or_else(|| {
            text.split("unknown field `")
                .nth(1)
                .and_then(|rest| rest.split('`').next())
                .map(|f| format!("{f} (unknown key)"))
        })
        .unwrap_or_else(|| "configuration".into());
    ConfigError { key, message: text }
}
