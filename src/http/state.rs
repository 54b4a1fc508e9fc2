//! The state every handler shares, built once before the HTTP server starts
//! so all workers share one service, one cache and one registry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::auth::{AdminKey, Auth};
use crate::config::{CacheMode, CacheScope, FalMode};
use crate::domain::ModelCatalog;
use crate::keys::KeyDirectory;
use crate::limits::KeyLimits;
use crate::metrics::Metrics;
use crate::openai::PlanLimits;
use crate::service::GenerationService;

pub struct AppState {
    pub service: Arc<GenerationService>,
    pub catalog: ModelCatalog,
    pub auth: Auth,
    /// The admin API's key (off when unset).
    pub admin: AdminKey,
    /// Database keys, cached for the hot path; their store.
    pub keys: Arc<KeyDirectory>,
    /// Per-key rate limits (may be disabled).
    pub limits: KeyLimits,
    pub metrics: Arc<Metrics>,
    /// `/metrics` needs no key.
    pub metrics_public: bool,
    pub fal_mode: FalMode,
    /// `server.public_base_url` without a trailing slash, if set.
    pub public_base_url: Option<String>,
    /// `server.trust_forwarded_headers`: links may follow the request's
    /// `Forwarded` / `X-Forwarded-*` / `Host` headers.
    pub trust_forwarded_headers: bool,
    pub plan_limits: PlanLimits,
    pub max_body_bytes: usize,
    pub body_timeout: Duration,
    pub cache_scope: CacheScope,
    /// Reported by `/readyz`.
    pub cache_mode: CacheMode,
    /// Interval of SSE comment keep-alives while a streamed image is made.
    pub stream_keepalive: Duration,
    pub started: Instant,
}
