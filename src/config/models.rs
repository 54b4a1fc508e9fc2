//! The model table in configuration: public ids, aliases and the chain of
//! fal endpoints behind each, the endpoint profiles (built in, overridden or
//! added with `[[models.profiles]]`), and the built-in defaults.
//! Configuration builds the domain's [`ModelCatalog`] from it.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::choice::choice;
use super::profiles::ProfileEntry;
use crate::domain::builtin::{self, SUCCESSORS};
use crate::domain::{Date, EndpointId, EndpointProfile, Lifecycle, Model, ModelCatalog, date};

/// One public model and the fal endpoints that serve it, in order.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// Public id clients send as `model`.
    pub id: String,
    /// One fal endpoint id, `owner/alias[/path]` (the same as a one-entry
    /// `endpoints`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// fal endpoint ids tried in order: the next serves when one is gone,
    /// failing, out of capacity or does not start in time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    /// Other names that resolve to this model.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// `YYYY-MM-DD`: from this day answers carry `Deprecation`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deprecated: Option<String>,
    /// `YYYY-MM-DD`: announced in `Sunset`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sunset: Option<String>,
}

impl ModelEntry {
    fn new(id: &str, endpoints: &[&str], aliases: &[&str]) -> Self {
        Self {
            id: id.into(),
            endpoints: endpoints.iter().map(|s| (*s).to_owned()).collect(),
            aliases: aliases.iter().map(|s| (*s).to_owned()).collect(),
            ..Self::default()
        }
    }

    /// `endpoint` and `endpoints` together, in order.
    pub fn chain(&self) -> Vec<&str> {
        self.endpoint
            .iter()
            .map(String::as_str)
            .chain(self.endpoints.iter().map(String::as_str))
            .collect()
    }
}

choice! {
    /// Where Imagen 4's successors go in the built-in chains.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub enum Successors {
        /// Imagen 4 ids are served by Imagen 4 only.
        #[default]
        Off = "off",
        /// Each Imagen 4 endpoint is followed by its successor, which serves
        /// only when Imagen cannot (at the successor's price).
        Behind = "behind",
        /// The successor serves first; Imagen 4 only when it cannot.
        First = "first",
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSettings {
    /// Model used when a request names none.
    pub default: String,
    /// Imagen 4's successors in its chains: `off`, `behind` or `first`.
    pub successors: Successors,
    /// How long an endpoint that answered "gone" (404/410 at submit) is
    /// skipped before it is tried again.
    pub gone_skip_seconds: u64,
    /// When another endpoint follows in the chain, a job not started within
    /// this many seconds is cancelled and the next endpoint is tried.
    pub start_timeout_seconds: u64,
    /// The model table. Setting it replaces the built-in table as a whole.
    pub catalog: Vec<ModelEntry>,
    /// Endpoint profiles added, or built-in ones changed.
    pub profiles: Vec<ProfileEntry>,
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
            successors: Successors::Off,
            gone_skip_seconds: 300,
            start_timeout_seconds: 60,
            catalog: vec![
                ModelEntry::new(
                    "imagen-4-fast",
                    &[builtin::IMAGEN_4_FAST],
                    &OPENAI_MODEL_ALIASES,
                ),
                ModelEntry::new("imagen-4", &[builtin::IMAGEN_4], &[]),
                ModelEntry::new("imagen-4-ultra", &[builtin::IMAGEN_4_ULTRA], &[]),
                ModelEntry::new("nano-banana-2", &[builtin::NANO_BANANA_2], &[]),
                ModelEntry::new("nano-banana-pro", &[builtin::NANO_BANANA_PRO], &[]),
                ModelEntry::new("flux-schnell", &[builtin::FLUX_SCHNELL], &[]),
                ModelEntry::new("flux-dev", &[builtin::FLUX_DEV], &[]),
                ModelEntry::new("flux-2-pro", &[builtin::FLUX_2_PRO], &[]),
                ModelEntry::new("seedream-4", &[builtin::SEEDREAM_4], &[]),
            ],
            profiles: Vec::new(),
        }
    }
}

impl ModelSettings {
    /// Every model id and alias is unique, every chain non-empty and made of
    /// endpoints with a profile, every profile entry and date valid, and
    /// the default names a model.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.catalog().map(|_| ())
    }

    /// The profiles: built-in ones, with `[[models.profiles]]` applied.
    pub fn profiles(&self) -> Result<Vec<Arc<EndpointProfile>>, ConfigError> {
        let mut all = builtin::profiles();
        let mut seen = BTreeSet::new();
        for entry in &self.profiles {
            if !seen.insert(entry.endpoint.as_str()) {
                return Err(ConfigError::new(
                    "models.profiles",
                    format!("endpoint `{}` has two entries", entry.endpoint),
                ));
            }
            match all.iter().position(|p| p.endpoint.full() == entry.endpoint) {
                Some(i) => all[i] = entry.apply(Some(&all[i]))?,
                None => all.push(entry.apply(None)?),
            }
        }
        Ok(all.into_iter().map(Arc::new).collect())
    }

    /// A chain as configured, with `successors` applied to chains whose
    /// first endpoint is a built-in Imagen 4 one.
    fn chain_of<'a>(&self, entry: &'a ModelEntry) -> Vec<&'a str> {
        let mut chain = entry.chain();
        let successor = chain
            .first()
            .and_then(|first| SUCCESSORS.iter().find(|(imagen, _)| imagen == first))
            .map(|(_, successor)| *successor);
        if let Some(successor) = successor
            && !chain.contains(&successor)
        {
            match self.successors {
                Successors::Off => {}
                Successors::Behind => chain.push(successor),
                Successors::First => chain.insert(0, successor),
            }
        }
        chain
    }

    /// The catalog the gateway serves.
    pub fn catalog(&self) -> Result<ModelCatalog, ConfigError> {
        const KEY: &str = "models.catalog";
        if self.catalog.is_empty() {
            return Err(ConfigError::new(KEY, "needs at least one model"));
        }
        let profiles = self.profiles()?;
        let mut names = BTreeSet::new();
        let mut models = Vec::with_capacity(self.catalog.len());
        for m in &self.catalog {
            if m.id.trim().is_empty() {
                return Err(ConfigError::new(KEY, "a model has an empty `id`"));
            }
            let chain = self.chain_of(m);
            if chain.is_empty() {
                return Err(ConfigError::new(
                    KEY,
                    format!("model `{}` needs `endpoints` (or `endpoint`)", m.id),
                ));
            }
            let mut profiled = Vec::with_capacity(chain.len());
            for endpoint in &chain {
                if EndpointId::parse(endpoint).is_none() {
                    return Err(ConfigError::new(
                        KEY,
                        format!(
                            "model `{}`: endpoint `{endpoint}` is not of the form owner/alias[/path]",
                            m.id
                        ),
                    ));
                }
                if profiled
                    .iter()
                    .any(|p: &Arc<EndpointProfile>| p.endpoint.full() == *endpoint)
                {
                    return Err(ConfigError::new(
                        KEY,
                        format!("model `{}` lists endpoint `{endpoint}` twice", m.id),
                    ));
                }
                let profile = profiles
                    .iter()
                    .find(|p| p.endpoint.full() == *endpoint)
                    .ok_or_else(|| {
                        ConfigError::new(
                            KEY,
                            format!(
                                "model `{}`: endpoint `{endpoint}` has no profile; add a [[models.profiles]] entry saying how it takes size and what it costs (docs/models.md)",
                                m.id
                            ),
                        )
                    })?;
                profiled.push(profile.clone());
            }
            for name in std::iter::once(&m.id).chain(&m.aliases) {
                if !names.insert(name.as_str()) {
                    return Err(ConfigError::new(
                        KEY,
                        format!("the name `{name}` is used twice"),
                    ));
                }
            }
            let date = |what: &str, text: &Option<String>| -> Result<Option<Date>, ConfigError> {
                match text.as_deref().map(str::trim) {
                    None | Some("") => Ok(None),
                    Some(t) => date::parse(t).map(Some).ok_or_else(|| {
                        ConfigError::new(
                            KEY,
                            format!(
                                "model `{}`: `{what}` = `{t}` is not a date like 2026-07-17",
                                m.id
                            ),
                        )
                    }),
                }
            };
            let lifecycle = Lifecycle {
                deprecated: date("deprecated", &m.deprecated)?,
                sunset: date("sunset", &m.sunset)?,
            };
            models.push(
                Model::new(m.id.clone(), profiled, m.aliases.clone(), lifecycle)
                    .ok_or_else(|| ConfigError::new(KEY, "a model has no endpoint"))?,
            );
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
        ModelCatalog::new(models, &self.default, profiles)
            .ok_or_else(|| ConfigError::new("models.default", "names no model"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::profile::SizeInput;

    fn toml_settings(text: &str) -> Result<ModelSettings, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gw.toml");
        std::fs::write(&path, text).unwrap();
        crate::config::Settings::load_from(Some(&path), Vec::<(String, String)>::new())
            .map(|s| s.models)
    }

    #[test]
    fn the_built_in_catalog_serves_imagen_first_and_its_successors_by_their_own_ids() {
        let catalog = ModelSettings::default().catalog().unwrap();
        let chain = |name: &str| -> Vec<String> {
            catalog
                .resolve(name)
                .unwrap()
                .chain
                .iter()
                .map(|p| p.endpoint.full().to_owned())
                .collect()
        };
        assert_eq!(catalog.default_model().id, "imagen-4-fast");
        assert_eq!(chain("imagen-4-fast"), [builtin::IMAGEN_4_FAST]);
        assert_eq!(chain("dall-e-3"), [builtin::IMAGEN_4_FAST]);
        assert_eq!(chain("nano-banana-2"), [builtin::NANO_BANANA_2]);
        assert_eq!(chain("seedream-4"), [builtin::SEEDREAM_4]);
        assert_eq!(catalog.profiles().len(), 9);
    }

    #[test]
    fn successors_go_behind_or_before_imagen_in_one_setting() {
        let mut settings = ModelSettings {
            successors: Successors::Behind,
            ..ModelSettings::default()
        };
        let catalog = settings.catalog().unwrap();
        let chain = |c: &ModelCatalog, name: &str| -> Vec<String> {
            c.resolve(name)
                .unwrap()
                .chain
                .iter()
                .map(|p| p.endpoint.full().to_owned())
                .collect()
        };
        assert_eq!(
            chain(&catalog, "imagen-4-fast"),
            [builtin::IMAGEN_4_FAST, builtin::NANO_BANANA_2]
        );
        assert_eq!(
            chain(&catalog, "imagen-4-ultra"),
            [builtin::IMAGEN_4_ULTRA, builtin::NANO_BANANA_PRO]
        );
        assert_eq!(chain(&catalog, "flux-dev"), [builtin::FLUX_DEV]);
        settings.successors = Successors::First;
        let catalog = settings.catalog().unwrap();
        assert_eq!(
            chain(&catalog, "imagen-4"),
            [builtin::NANO_BANANA_2, builtin::IMAGEN_4]
        );
    }

    #[test]
    fn a_chain_is_written_as_endpoints_and_one_endpoint_keeps_working() {
        let models = toml_settings(
            r#"
[models]
default = "fast"
[[models.catalog]]
id = "fast"
endpoints = ["fal-ai/imagen4/preview/fast", "fal-ai/nano-banana-2"]
aliases = ["dall-e-3", "gpt-image-1"]
deprecated = "2026-07-17"
[[models.catalog]]
id = "old"
endpoint = "fal-ai/imagen4/preview"
"#,
        )
        .unwrap();
        let catalog = models.catalog().unwrap();
        let fast = catalog.resolve("gpt-image-1").unwrap();
        assert_eq!(fast.chain.len(), 2);
        assert_eq!(fast.chain[1].endpoint.full(), "fal-ai/nano-banana-2");
        assert_eq!(fast.lifecycle.deprecated, date::parse("2026-07-17"));
        assert_eq!(catalog.resolve("old").unwrap().chain.len(), 1);
    }

    #[test]
    fn profiles_are_overridden_key_by_key_and_added_in_full() {
        let models = toml_settings(
            r#"
[[models.profiles]]
endpoint = "fal-ai/nano-banana-2"
price = { per = "image", usd = "0.07", resolutions = ["2K 0.11"], checked = "2026-12-01" }
sunset = "2027-03-01"

[[models.profiles]]
endpoint = "acme/painter/v2"
size = "image_size"
presets = ["square_hd 1024x1024"]
custom_size = { min_side = 512, max_side = 1536, multiple_of = 64 }
max_images = 2
output_formats = ["png"]
seed = "input_output"
extra = { steps = 8, style = "photo" }
price = { per = "megapixel", usd = 0.01, checked = "2026-11-30", source = "acme.example pricing page" }

[[models.catalog]]
id = "painter"
endpoints = ["acme/painter/v2", "fal-ai/nano-banana-2"]
[models]
default = "painter"
"#,
        )
        .unwrap();
        let catalog = models.catalog().unwrap();
        let nb2 = catalog.profile("fal-ai/nano-banana-2").unwrap();
        assert_eq!(nb2.price.image_cost(None, 1024, 1024).usd_string(), "0.07");
        assert_eq!(nb2.price.image_cost(Some("2K"), 1, 1).usd_string(), "0.11");
        assert_eq!(nb2.lifecycle.sunset, date::parse("2027-03-01"));
        assert_eq!(
            nb2.input.max_images, 4,
            "untouched keys keep the built-in facts"
        );
        let acme = catalog.profile("acme/painter/v2").unwrap();
        assert!(
            matches!(&acme.input.size, SizeInput::ImageSize { custom: Some(c), .. } if c.multiple_of == 64)
        );
        assert_eq!(acme.input.extra.len(), 2);
        assert_eq!(acme.price.source, "acme.example pricing page");
        assert_eq!(
            catalog.default_model().chain[0].endpoint.full(),
            "acme/painter/v2"
        );
    }

    #[test]
    fn bad_model_tables_name_their_key_and_the_fix() {
        let cases = [
            (
                r#"[[models.catalog]]
id = "x"
endpoints = ["nobody/knows"]
[models]
default = "x""#,
                "models.catalog",
                "has no profile",
            ),
            (
                r#"[[models.catalog]]
id = "x"
[models]
default = "x""#,
                "models.catalog",
                "needs `endpoints`",
            ),
            (
                r#"[[models.catalog]]
id = "x"
endpoints = ["fal-ai/flux/dev", "fal-ai/flux/dev"]
[models]
default = "x""#,
                "models.catalog",
                "twice",
            ),
            (
                r#"[[models.catalog]]
id = "x"
endpoint = "fal-ai/flux/dev"
sunset = "soon"
[models]
default = "x""#,
                "models.catalog",
                "not a date",
            ),
            (
                r#"[[models.profiles]]
endpoint = "a/b"
size = "aspect_ratio"
aspect_ratios = ["1:1 1024x1024"]"#,
                "models.profiles",
                "needs a `price`",
            ),
            (
                r#"[[models.profiles]]
endpoint = "a/b"
price = { per = "image", usd = "0.01", checked = "2026-11-30" }"#,
                "models.profiles",
                "needs `size`",
            ),
            (
                r#"[[models.profiles]]
endpoint = "fal-ai/flux/dev"
price = { per = "image", usd = "-1", checked = "2026-11-30" }"#,
                "models.profiles",
                "dollar amount",
            ),
            (
                r#"[[models.profiles]]
endpoint = "fal-ai/flux/dev"
price = { per = "image", usd = "0.01", checked = "yesterday" }"#,
                "models.profiles",
                "not a date",
            ),
            (
                r#"[[models.profiles]]
endpoint = "fal-ai/flux/dev"
resolutions = ["hd"]"#,
                "models.profiles",
                "not like 1K",
            ),
            (
                r#"[[models.profiles]]
endpoint = "fal-ai/flux/dev"
output_formats = ["gif"]"#,
                "models.profiles",
                "gif",
            ),
            (
                r#"[[models.profiles]]
endpoint = "fal-ai/flux/dev"
max_images = 0"#,
                "models.profiles",
                "max_images",
            ),
            (
                "[models]\nstart_timeout_seconds = 1\n",
                "models.start_timeout_seconds",
                "out of range",
            ),
        ];
        for (text, key, words) in cases {
            let err = toml_settings(text).unwrap_err();
            assert_eq!(err.key, key, "{text}: {err}");
            assert!(err.to_string().contains(words), "{text}: {err}");
        }
    }
}
