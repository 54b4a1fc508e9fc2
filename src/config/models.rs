//! The model table in configuration: public ids, aliases and the fal
//! endpoint behind each, with the built-in defaults. Configuration builds
//! the domain's [`ModelCatalog`] from it.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::domain::{EndpointId, Model, ModelCatalog};

/// One public model and the fal endpoint that serves it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// Public id clients send as `model`.
    pub id: String,
    /// fal endpoint id, `owner/alias[/path]`.
    pub endpoint: String,
    /// Other names that resolve to this model.
    #[serde(default)]
    pub aliases: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSettings {
    /// Model used when a request names none.
    pub default: String,
    /// The model table. Setting it replaces the built-in table as a whole.
    pub catalog: Vec<ModelEntry>,
}

/// OpenAI's own image model names, served by the default model so unchanged
/// client code works.
pub const OPENAI_MODEL_ALIASES: [&str; 6] = [
    "dall-e-2",
    "dall-e-3",
    "gpt-image-1",
    "gpt-image-1-mini",
    "gpt-image-1.5",
    "gpt-image-2",
];

impl Default for ModelSettings {
    fn default() -> Self {
        Self {
            default: "imagen-4-fast".into(),
            catalog: vec![
                ModelEntry {
                    id: "imagen-4-fast".into(),
                    endpoint: "fal-ai/imagen4/preview/fast".into(),
                    aliases: OPENAI_MODEL_ALIASES.iter().map(|s| s.to_string()).collect(),
                },
                ModelEntry {
                    id: "imagen-4".into(),
                    endpoint: "fal-ai/imagen4/preview".into(),
                    aliases: vec![],
                },
                ModelEntry {
                    id: "imagen-4-ultra".into(),
                    endpoint: "fal-ai/imagen4/preview/ultra".into(),
                    aliases: vec![],
                },
            ],
        }
    }
}

impl ModelSettings {
    /// Every model id and alias is unique, every endpoint well formed, and
    /// the default names a model.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.catalog.is_empty() {
            return Err(ConfigError::new(
                "models.catalog",
                "needs at least one model",
            ));
        }
        let mut names = BTreeSet::new();
        for m in &self.catalog {
            if m.id.trim().is_empty() {
                return Err(ConfigError::new(
                    "models.catalog",
                    "a model has an empty `id`",
                ));
            }
            if EndpointId::parse(&m.endpoint).is_none() {
                return Err(ConfigError::new(
                    "models.catalog",
                    format!(
                        "model `{}`: endpoint `{}` is not of the form owner/alias[/path]",
                        m.id, m.endpoint
                    ),
                ));
            }
            for name in std::iter::once(&m.id).chain(&m.aliases) {
                if !names.insert(name.as_str()) {
                    return Err(ConfigError::new(
                        "models.catalog",
                        format!("the name `{name}` is used twice"),
                    ));
                }
            }
        }
        if !names.contains(self.default.as_str()) {
            return Err(ConfigError::new(
                "models.default",
                format!(
                    "`{}` is not a model id or alias in models.catalog",
                    self.default
                ),
            ));
        }
        Ok(())
    }

    /// The catalog the gateway serves.
    pub fn catalog(&self) -> Result<ModelCatalog, ConfigError> {
        self.validate()?;
        let mut models = Vec::with_capacity(self.catalog.len());
        for entry in &self.catalog {
            let endpoint = EndpointId::parse(&entry.endpoint).ok_or_else(|| {
                ConfigError::new("models.catalog", "an endpoint is not owner/alias[/path]")
            })?;
            models.push(Model {
                id: entry.id.clone(),
                endpoint,
                aliases: entry.aliases.clone(),
            });
        }
        ModelCatalog::new(models, &self.default)
            .ok_or_else(|| ConfigError::new("models.default", "names no model"))
    }
}
