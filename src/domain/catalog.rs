//! The models the gateway serves: public ids and aliases, each resolved to
//! the upstream endpoint that serves it.

use std::collections::HashMap;
use std::sync::Arc;

/// An upstream endpoint id, `owner/alias[/path]` (fal's form), with the
/// `owner/alias` prefix the queue's status, result and cancel URLs use.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EndpointId {
    full: Arc<str>,
    app_len: usize,
}

impl EndpointId {
    pub fn parse(id: &str) -> Option<Self> {
        let mut parts = id.split('/');
        let owner = parts.next()?;
        let alias = parts.next()?;
        let valid = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                && s != "."
                && s != ".."
        };
        if !valid(owner) || !valid(alias) || !parts.all(valid) {
            return None;
        }
        Some(Self {
            full: id.into(),
            app_len: owner.len() + 1 + alias.len(),
        })
    }

    /// `fal-ai/imagen4/preview/fast`
    pub fn full(&self) -> &str {
        &self.full
    }

    /// `fal-ai/imagen4`
    pub fn app(&self) -> &str {
        &self.full[..self.app_len]
    }
}

/// A public model as the gateway serves it.
#[derive(Debug)]
pub struct Model {
    pub id: String,
    pub endpoint: EndpointId,
    pub aliases: Vec<String>,
}

/// The model table: names (ids and aliases) to models.
#[derive(Debug)]
pub struct ModelCatalog {
    models: Vec<Arc<Model>>,
    by_name: HashMap<String, Arc<Model>>,
    default: Arc<Model>,
}

impl ModelCatalog {
    /// `None` when `default` names no model (callers validate first).
    pub fn new(models: Vec<Model>, default: &str) -> Option<Self> {
        let models: Vec<Arc<Model>> = models.into_iter().map(Arc::new).collect();
        let mut by_name = HashMap::new();
        for model in &models {
            for name in std::iter::once(&model.id).chain(&model.aliases) {
                by_name.insert(name.clone(), model.clone());
            }
        }
        let default = by_name.get(default)?.clone();
        Some(Self {
            models,
            by_name,
            default,
        })
    }

    pub fn models(&self) -> &[Arc<Model>] {
        &self.models
    }

    pub fn default_model(&self) -> &Arc<Model> {
        &self.default
    }

    /// A name as a client sent it; exact match, then case-insensitive.
    pub fn resolve(&self, name: &str) -> Option<&Arc<Model>> {
        self.by_name.get(name).or_else(|| {
            self.by_name
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
        })
    }

    /// Every public name (ids then aliases) with its model.
    pub fn names(&self) -> impl Iterator<Item = (&str, &Arc<Model>)> {
        self.models.iter().flat_map(|m| {
            std::iter::once(m.id.as_str())
                .chain(m.aliases.iter().map(String::as_str))
                .map(move |name| (name, m))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_ids_are_validated() {
        for bad in [
            "",
            "fal-ai",
            "fal-ai/",
            "/imagen4",
            "fal-ai/../x",
            "fal ai/x",
            "a/b?c",
            "a/b/",
        ] {
            assert!(EndpointId::parse(bad).is_none(), "{bad:?}");
        }
        let id = EndpointId::parse("fal-ai/imagen4/preview").unwrap();
        assert_eq!(id.app(), "fal-ai/imagen4");
    }

    #[test]
    fn names_resolve_exactly_then_ignoring_case() {
        let model = |id: &str, aliases: &[&str]| Model {
            id: id.into(),
            endpoint: EndpointId::parse("o/a").unwrap(),
            aliases: aliases.iter().map(|s| s.to_string()).collect(),
        };
        let catalog = ModelCatalog::new(vec![model("m1", &["x"]), model("m2", &[])], "x").unwrap();
        assert_eq!(catalog.default_model().id, "m1");
        assert_eq!(catalog.resolve("X").unwrap().id, "m1");
        assert_eq!(catalog.resolve("m2").unwrap().id, "m2");
        assert!(catalog.resolve("m3").is_none());
        assert_eq!(
            catalog.names().map(|(n, _)| n).collect::<Vec<_>>(),
            ["m1", "x", "m2"]
        );
        assert!(ModelCatalog::new(vec![model("m1", &[])], "nope").is_none());
    }
}
