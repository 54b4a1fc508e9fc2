//! Layered configuration: built-in defaults, then an optional TOML file, then
//! `IMAGE_GATEWAY__SECTION__KEY` environment variables, then `FAL_KEY`.
//!
//! The names `server.listen`, `backend`, `fal.queue_url`, `fal.run_url` and
//! `auth.api_keys` are fixed by the design and relied on by the deploy files.
//! Every key here must also appear in `deploy/config.example.toml` (a test checks).

use serde::{Deserialize, Serialize};

use crate::domain::BackendKind;
use choice::choice;

mod choice;
mod database;
mod error;
mod models;
mod profiles;
mod secret;
mod sections;
#[cfg(test)]
mod tests;
mod validate;

pub use database::{DatabaseSettings, DatabaseUrl};
pub use error::ConfigError;
pub use models::{ModelEntry, ModelSettings, OPENAI_MODEL_ALIASES, Successors};
pub use profiles::{CustomSizeEntry, PriceEntry, ProfileEntry, Usd};
pub use secret::{RedisUrl, Secret};
pub use sections::{
    AuthSettings, CacheMode, CacheScope, CacheSettings, FalMode, FalSettings, FileSettings,
    LimitSettings, LocalSettings, LogFormat, LogSettings, MetricsSettings, QueuePriority,
    ServerSettings,
};

choice! {
    /// Which image backend serves generations.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub enum BackendChoice {
        /// `fal` when a fal key is configured, otherwise `local` (with a warning).
        #[default]
        Auto = "auto",
        Fal = "fal",
        Local = "local",
    }
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
    pub database: DatabaseSettings,
    pub metrics: MetricsSettings,
    pub log: LogSettings,
    /// Problems found while loading that do not stop start-up (an ignored
    /// environment variable, a deprecated key): logged as warnings and
    /// printed by `--check-config`.
    #[serde(skip)]
    pub warnings: Vec<String>,
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
        let mut single_underscore = Vec::new();
        for (k, v) in vars {
            if k == "FAL_KEY" {
                if !v.trim().is_empty() {
                    fal_key = Some(Secret::new(v.trim()));
                }
            } else if k.starts_with("IMAGE_GATEWAY__") {
                env.insert(k, v);
            } else if k.starts_with("IMAGE_GATEWAY_") {
                single_underscore.push(k);
            }
        }
        let mut warnings = Vec::new();
        let known_keys: Vec<String> = validate::setting_keys(&Settings::default());
        single_underscore.sort();
        for var in &single_underscore {
            if let Some(warning) = error::check_single_underscore(var, &known_keys)? {
                warnings.push(warning);
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
            if path.is_dir() {
                return Err(ConfigError::new(
                    "--config",
                    format!(
                        "{} is a directory; give the path of a TOML file (see deploy/config.example.toml)",
                        path.display()
                    ),
                ));
            }
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        let sources = error::Sources { file, env: &env };
        builder = builder.add_source(
            config::Environment::with_prefix("IMAGE_GATEWAY")
                .prefix_separator("__")
                .separator("__")
                .source(Some(env.clone())),
        );
        let cfg = builder.build().map_err(|e| sources.translate(e))?;
        let mut settings: Settings = cfg.try_deserialize().map_err(|e| sources.translate(e))?;
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
        if let Some(enabled) = settings.cache.enabled.take() {
            if !enabled {
                settings.cache.mode = CacheMode::Off;
            }
            warnings.push(format!(
                "cache.enabled is deprecated: write cache.mode = \"{}\" (IMAGE_GATEWAY__CACHE__MODE)",
                settings.cache.mode.as_str()
            ));
        }
        settings.validate()?;
        settings.warnings = warnings;
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
