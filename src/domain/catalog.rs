//! The models the gateway serves: public ids and aliases, each resolved to
//! an ordered chain of upstream endpoints (the first that can serve a
//! request does), with every endpoint's profile.

use std::collections::HashMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::profile::{EndpointProfile, Lifecycle};

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
    /// The endpoints that may serve it, in the order they are tried; never
    /// empty.
    pub chain: Vec<Arc<EndpointProfile>>,
    pub aliases: Vec<String>,
    /// The model's own dates (its endpoints have theirs).
    pub lifecycle: Lifecycle,
    /// A digest of the chain: its endpoints and everything in their
    /// profiles that shapes a request or its images (not prices or dates).
    /// Cache keys include it, so an edited chain never serves entries made
    /// under the old one.
    pub fingerprint: [u8; 32],
}

impl Model {
    pub fn new(
        id: String,
        chain: Vec<Arc<EndpointProfile>>,
        aliases: Vec<String>,
        lifecycle: Lifecycle,
    ) -> Option<Self> {
        if chain.is_empty() {
            return None;
        }
        let mut h = Sha256::new();
        for p in &chain {
            let text = format!("{}\n{:?}\n", p.endpoint.full(), p.input);
            h.update((text.len() as u64).to_le_bytes());
            h.update(text.as_bytes());
        }
        Some(Self {
            id,
            chain,
            aliases,
            lifecycle,
            fingerprint: h.finalize().into(),
        })
    }

    /// The first endpoint of the chain.
    pub fn primary(&self) -> &Arc<EndpointProfile> {
        &self.chain[0]
    }

    /// The first endpoint's id.
    pub fn endpoint(&self) -> &EndpointId {
        &self.primary().endpoint
    }

    /// The dates answers for this model announce: the model's own, else
    /// its first endpoint's.
    pub fn announced_lifecycle(&self) -> Lifecycle {
        let primary = self.primary().lifecycle;
        Lifecycle {
            deprecated: self.lifecycle.deprecated.or(primary.deprecated),
            sunset: self.lifecycle.sunset.or(primary.sunset),
        }
    }
}

/// The model table: names (ids and aliases) to models, and every endpoint
/// profile known (built in or configured), used by a chain or not.
#[derive(Debug)]
pub struct ModelCatalog {
    models: Vec<Arc<Model>>,
    by_name: HashMap<String, Arc<Model>>,
    default: Arc<Model>,
    profiles: Vec<Arc<EndpointProfile>>,
}

impl ModelCatalog {
    /// `None` when `default` names no model (callers validate first).
    pub fn new(
        models: Vec<Model>,
        default: &str,
        profiles: Vec<Arc<EndpointProfile>>,
    ) -> Option<Self> {
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
            profiles,
        })
    }

    /// Every known endpoint profile.
    pub fn profiles(&self) -> &[Arc<EndpointProfile>] {
        &self.profiles
    }

    /// The profile of an endpoint id.
    pub fn profile(&self, endpoint: &str) -> Option<&Arc<EndpointProfile>> {
        self.profiles.iter().find(|p| p.endpoint.full() == endpoint)
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
        let profile = Arc::new(super::super::builtin::profiles().remove(0));
        let model = |id: &str, aliases: &[&str]| {
            Model::new(
                id.into(),
                vec![profile.clone()],
                aliases.iter().map(|s| s.to_string()).collect(),
                Lifecycle::default(),
            )
            .unwrap()
        };
        let catalog =
            ModelCatalog::new(vec![model("m1", &["x"]), model("m2", &[])], "x", vec![]).unwrap();
        assert_eq!(catalog.default_model().id, "m1");
        assert_eq!(catalog.resolve("X").unwrap().id, "m1");
        assert_eq!(catalog.resolve("m2").unwrap().id, "m2");
        assert!(catalog.resolve("m3").is_none());
        assert_eq!(
            catalog.names().map(|(n, _)| n).collect::<Vec<_>>(),
            ["m1", "x", "m2"]
        );
        assert!(ModelCatalog::new(vec![model("m1", &[])], "nope", vec![]).is_none());
    }

    #[test]
    fn the_fingerprint_follows_the_chain_not_its_prices() {
        let all: Vec<Arc<EndpointProfile>> = super::super::builtin::profiles()
            .into_iter()
            .map(Arc::new)
            .collect();
        let model = |chain: Vec<Arc<EndpointProfile>>| {
            Model::new("m".into(), chain, vec![], Lifecycle::default()).unwrap()
        };
        let one = model(vec![all[0].clone()]);
        let two = model(vec![all[0].clone(), all[3].clone()]);
        let swapped = model(vec![all[3].clone(), all[0].clone()]);
        assert_ne!(one.fingerprint, two.fingerprint);
        assert_ne!(two.fingerprint, swapped.fingerprint);
        let mut repriced = (*all[0]).clone();
        repriced.price.source = "elsewhere".into();
        assert_eq!(model(vec![Arc::new(repriced)]).fingerprint, one.fingerprint);
        let mut reshaped = (*all[0]).clone();
        reshaped.input.max_images = 1;
        assert_ne!(model(vec![Arc::new(reshaped)]).fingerprint, one.fingerprint);
        assert!(Model::new("m".into(), vec![], vec![], Lifecycle::default()).is_none());
    }
}
