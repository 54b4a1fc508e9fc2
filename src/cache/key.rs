//! The cache key: two requests share an entry exactly when they would send
//! every endpoint of their model's chain the same request.

use sha2::{Digest, Sha256};

use crate::domain::GenerationPlan;

/// A fixed-size digest: cheap to hash and compare, and holds no prompt text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CacheKey(pub [u8; 32]);

impl CacheKey {
    /// A digest of everything that changes the upstream requests: the
    /// model's chain identity (its endpoints and their schemas, so an edited
    /// chain never serves entries made under the old one), the prompt, the
    /// response kind, and what each endpoint of the chain would be sent
    /// (size option, resolution, image counts, format, seeds, safety
    /// setting); plus the tenant when the cache is scoped per key. Model
    /// aliases are resolved in the plan, so `dall-e-3` and `imagen-4-fast`
    /// share entries; an answer made by a fallback endpoint is found under
    /// the model id asked for.
    pub fn of(plan: &GenerationPlan, tenant: Option<&[u8]>) -> Self {
        let mut h = Sha256::new();
        let mut field = |bytes: &[u8]| {
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        field(&plan.model.fingerprint);
        field(plan.prompt.as_bytes());
        field(plan.response_format.as_str().as_bytes());
        for profile in &plan.model.chain {
            for job in plan.for_endpoint(profile).jobs {
                field(
                    format!(
                        "{:?}|{:?}|{}|{:?}|{:?}|{:?}",
                        job.size,
                        job.resolution,
                        job.num_images,
                        job.output_format,
                        job.seed,
                        job.safety_tolerance
                    )
                    .as_bytes(),
                );
            }
        }
        field(tenant.unwrap_or(b""));
        CacheKey(h.finalize().into())
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::validate::plan_json;

    #[test]
    fn cache_keys_match_exactly_when_upstream_bodies_match() {
        let key = |json: &str| CacheKey::of(&plan_json(json).unwrap(), None);
        let base = key(r#"{"prompt":"cat","model":"imagen-4-fast"}"#);
        // Same upstream body: aliases, explicit defaults, ignored fields, nulls.
        for same in [
            r#"{"prompt":"cat"}"#,
            r#"{"prompt":"cat","model":"dall-e-3","size":"1024x1024"}"#,
            r#"{"prompt":"cat","size":"auto","n":1,"output_format":"png","response_format":"url"}"#,
            r#"{"prompt":"cat","quality":"hd","style":"vivid","user":"bob","size":"512x512"}"#,
            r#"{"prompt":"cat","model":null,"n":null,"size":null}"#,
        ] {
            assert_eq!(key(same), base, "{same}");
        }
        // A different upstream body.
        for different in [
            r#"{"prompt":"cat "}"#,
            r#"{"prompt":"Cat"}"#,
            r#"{"prompt":"cat","model":"imagen-4"}"#,
            r#"{"prompt":"cat","size":"1792x1024"}"#,
            r#"{"prompt":"cat","n":2}"#,
            r#"{"prompt":"cat","output_format":"jpeg"}"#,
            r#"{"prompt":"cat","response_format":"b64_json"}"#,
            r#"{"prompt":"cat","model":"gpt-image-1"}"#,
            r#"{"prompt":"cat","seed":1}"#,
        ] {
            assert_ne!(key(different), base, "{different}");
        }
        let plan = plan_json(r#"{"prompt":"cat"}"#).unwrap();
        assert_ne!(
            CacheKey::of(&plan, Some(b"tenant-a")),
            CacheKey::of(&plan, Some(b"tenant-b"))
        );
        assert_ne!(CacheKey::of(&plan, Some(b"tenant-a")), base);
    }
}
