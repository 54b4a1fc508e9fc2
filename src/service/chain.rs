//! A model's chain of endpoints at work: the request is planned on the first
//! endpoint that may serve it and, when that endpoint cannot (it is gone,
//! failing, out of capacity, or its job did not start in time: see
//! [`Fallback`]), re-planned and run on the next, within the same request
//! deadline. Never on the client's own errors, a cancel, a passed deadline,
//! or once a job produced images (those errors arrive unmarked).
//!
//! Endpoints past their sunset date are skipped. An endpoint that answered
//! "gone" is skipped for `models.gone_skip_seconds` ([`GoneEndpoints`]), so
//! later requests do not pay for the probe; `/readyz` lists it meanwhile.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::flights::Flight;
use super::{GenerationService, Tab};
use crate::domain::{BackendKind, EndpointProfile, Generation, GenerationPlan, MicroUsd, date};
use crate::error::{ApiError, Fallback};
use crate::metrics::FallbackReason;
use crate::spend::Payer;

/// What an operator can do about an endpoint that is gone.
pub const GONE_HINT: &str = "configure a successor: models.successors = \"behind\" (Imagen 4's successors on fal), or more endpoints in the model's models.catalog entry; see docs/models.md";

/// Endpoints that answered "gone", each skipped until a moment.
pub struct GoneEndpoints {
    until: Mutex<HashMap<String, Instant>>,
    skip: Duration,
}

impl GoneEndpoints {
    pub fn new(skip: Duration) -> Self {
        Self {
            until: Mutex::new(HashMap::new()),
            skip,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.until.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn mark(&self, endpoint: &str) {
        self.lock()
            .insert(endpoint.to_owned(), Instant::now() + self.skip);
    }

    pub fn is_gone(&self, endpoint: &str) -> bool {
        let mut map = self.lock();
        match map.get(endpoint) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                map.remove(endpoint);
                false
            }
            None => false,
        }
    }

    /// Every endpoint marked now, with the seconds until it is tried again.
    pub fn list(&self) -> Vec<(String, u64)> {
        let now = Instant::now();
        let mut all: Vec<(String, u64)> = self
            .lock()
            .iter()
            .filter(|(_, until)| **until > now)
            .map(|(e, until)| (e.clone(), until.duration_since(now).as_secs().max(1)))
            .collect();
        all.sort();
        all
    }
}

impl GenerationService {
    /// Serve `plan` from its model's chain: each usable endpoint in turn
    /// until one produces the images or fails in a way the next would not
    /// fix.
    pub(super) async fn produce(
        &self,
        plan: &GenerationPlan,
        flight: &Flight,
        deadline: Instant,
        payer: &Payer,
        tab: &Tab,
    ) -> Result<Generation, ApiError> {
        let token = &flight.token;
        let model = plan.model.id.as_str();
        let today = date::today();
        let chain: Vec<&Arc<EndpointProfile>> = plan
            .model
            .chain
            .iter()
            .filter(|p| {
                let sunset = p.lifecycle.is_sunset(today);
                if sunset {
                    self.count_fallback(model, p, FallbackReason::Sunset);
                }
                !sunset
            })
            .collect();
        let mut gone: Vec<&Arc<EndpointProfile>> = Vec::new();
        let mut last_error = None;
        for (i, profile) in chain.iter().enumerate() {
            let endpoint = profile.endpoint.full();
            if self.gone.is_gone(endpoint) {
                self.count_fallback(model, profile, FallbackReason::MarkedGone);
                gone.push(profile);
                continue;
            }
            let next = chain[i + 1..]
                .iter()
                .any(|p| !self.gone.is_gone(p.endpoint.full()));
            let mut on_endpoint = plan.for_endpoint(profile);
            if next {
                for job in &mut on_endpoint.jobs {
                    job.start_timeout = Some(self.start_timeout);
                }
            }
            let error = match self
                .produce_on(plan, &on_endpoint, flight, deadline, payer, tab)
                .await
            {
                Ok(generation) => return Ok(generation),
                Err(e) => e,
            };
            let Some(reason) = error.fallback() else {
                return Err(error.into_cause());
            };
            if token.is_cancelled() || Instant::now() >= deadline {
                return Err(error.into_cause());
            }
            self.count_fallback(model, profile, FallbackReason::from(reason));
            if reason == Fallback::Gone {
                self.gone.mark(endpoint);
                gone.push(profile);
                tracing::warn!(
                    model,
                    endpoint,
                    skip_seconds = self.gone_skip.as_secs(),
                    "fal endpoint is gone (404/410 at submit); to keep serving this model, {GONE_HINT}"
                );
            } else if next {
                tracing::warn!(
                    model,
                    endpoint,
                    reason = reason.as_str(),
                    "fal endpoint could not serve; trying the next endpoint of the chain"
                );
            }
            last_error = Some(error);
        }
        Err(exhausted(plan, &chain, &gone, last_error))
    }

    /// The most `plan` could cost on the endpoints of its chain that may
    /// serve it (fallback may move it to a dearer one than the first): what
    /// a budget reserves. Nothing on the offline backend.
    pub(super) fn max_cost(&self, plan: &GenerationPlan) -> MicroUsd {
        if self.backend.kind() == BackendKind::Local {
            return MicroUsd::ZERO;
        }
        let today = date::today();
        plan.model
            .chain
            .iter()
            .filter(|p| !p.lifecycle.is_sunset(today))
            .map(|p| plan.for_endpoint(p).max_cost())
            .max()
            .unwrap_or(MicroUsd::ZERO)
    }
}

/// The client's error when no endpoint of the chain served.
fn exhausted(
    plan: &GenerationPlan,
    chain: &[&Arc<EndpointProfile>],
    gone: &[&Arc<EndpointProfile>],
    last_error: Option<ApiError>,
) -> ApiError {
    let model = &plan.model.id;
    if chain.is_empty() {
        return ApiError::Upstream {
            message: format!(
                "Every endpoint serving the model `{model}` is past its sunset date; the gateway's operator must configure another (see GET /v1/models/{model})."
            ),
        };
    }
    let last_gone = last_error
        .as_ref()
        .is_none_or(|e| e.fallback() == Some(Fallback::Gone));
    if last_gone && let Some(retired) = gone.last() {
        let names: Vec<&str> = gone.iter().map(|p| p.endpoint.full()).collect();
        return ApiError::Upstream {
            message: format!(
                "The model `{model}` is served by the fal endpoint `{}`, which fal no longer serves (it answered 404/410){}. The gateway's operator can {GONE_HINT}.",
                retired.endpoint.full(),
                if names.len() > 1 {
                    format!("; nor do {}", names[..names.len() - 1].join(", "))
                } else {
                    String::new()
                }
            ),
        };
    }
    last_error.map_or(ApiError::Internal, ApiError::into_cause)
}

impl From<Fallback> for FallbackReason {
    fn from(reason: Fallback) -> Self {
        match reason {
            Fallback::Gone => FallbackReason::Gone,
            Fallback::Failing => FallbackReason::Failing,
            Fallback::Capacity => FallbackReason::Capacity,
            Fallback::StartTimeout => FallbackReason::StartTimeout,
        }
    }
}

impl GenerationService {
    fn count_fallback(&self, model: &str, profile: &EndpointProfile, reason: FallbackReason) {
        self.metrics
            .fallbacks
            .with_label_values(&[model, profile.endpoint.full(), reason.as_str()])
            .inc();
    }

    /// Endpoints marked gone now, with the seconds until they are tried
    /// again.
    pub fn gone_endpoints(&self) -> Vec<(String, u64)> {
        self.gone.list()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use futures_util::future::BoxFuture;
    use tokio_util::task::TaskTracker;

    use super::*;
    use crate::backend::{GeneratedImage, ImageBackend, ImageContent, JobContext, JobOutput};
    use crate::cache::CacheDirectives;
    use crate::config::{ModelSettings, Successors};
    use crate::domain::{BackendKind, Job};
    use crate::files::FileStore;
    use crate::metrics::Metrics;
    use crate::openai::{PlanLimits, parse_generation_body, plan};
    use crate::service::limiter::JobLimiter;
    use crate::service::{Pending, ServiceParts};
    use crate::spend::Spend;
    use crate::store::Store;

    /// A backend that fails the jobs `fails` picks (after `delay`) and
    /// makes the others' images at once, recording (endpoint, images).
    struct Scripted {
        fails: fn(&Job) -> Option<ApiError>,
        delay: Duration,
        calls: StdMutex<Vec<(String, u8)>>,
    }

    impl ImageBackend for Scripted {
        fn kind(&self) -> BackendKind {
            BackendKind::Fal
        }

        fn generate<'a>(
            &'a self,
            job: &'a Job,
            _ctx: &'a JobContext,
        ) -> BoxFuture<'a, Result<JobOutput, ApiError>> {
            self.calls
                .lock()
                .unwrap()
                .push((job.endpoint.full().to_owned(), job.num_images));
            Box::pin(async move {
                if let Some(e) = (self.fails)(job) {
                    tokio::time::sleep(self.delay).await;
                    return Err(e);
                }
                let image = GeneratedImage {
                    content: ImageContent::Url("https://v3.fal.media/files/x.png".into()),
                    width: Some(job.expected_size.0),
                    height: Some(job.expected_size.1),
                    format: None,
                };
                Ok(JobOutput {
                    images: vec![image; usize::from(job.num_images)],
                    queued: None,
                    running: None,
                    seed: None,
                    billable_units: None,
                })
            })
        }
    }

    async fn service(backend: Arc<Scripted>) -> Arc<GenerationService> {
        service_with_store(backend).await.0
    }

    async fn service_with_store(backend: Arc<Scripted>) -> (Arc<GenerationService>, Store) {
        let metrics = Arc::new(Metrics::new());
        let store = Store::open(&crate::config::DatabaseSettings {
            url: crate::config::DatabaseUrl::new("sqlite::memory:"),
            ..Default::default()
        })
        .await
        .unwrap();
        let service = GenerationService::new(ServiceParts {
            backend,
            files: Arc::new(FileStore::new(1 << 20, Duration::from_secs(60))),
            cache: None,
            shared_cache: None,
            memory: crate::memory::MemoryBudget::new(1 << 30, 4, metrics.clone()),
            cache_seeded_only: false,
            limiter: JobLimiter::new(8, 8, metrics.clone()),
            spend: Arc::new(Spend::new(
                store.clone(),
                metrics.clone(),
                Duration::from_secs(30),
            )),
            metrics,
            request_timeout: Duration::from_secs(30),
            gone_skip: Duration::from_secs(60),
            start_timeout: Duration::from_secs(10),
            runtime: tokio::runtime::Handle::current(),
            tasks: TaskTracker::new(),
        });
        (service, store)
    }

    async fn generate(
        service: &Arc<GenerationService>,
        body: &str,
    ) -> Result<Arc<Generation>, ApiError> {
        generate_for(service, body, &Payer::default()).await
    }

    async fn generate_for(
        service: &Arc<GenerationService>,
        body: &str,
        payer: &Payer,
    ) -> Result<Arc<Generation>, ApiError> {
        let settings = ModelSettings {
            successors: Successors::Behind,
            ..ModelSettings::default()
        };
        let catalog = settings.catalog().unwrap();
        let parsed = parse_generation_body(body.as_bytes()).unwrap();
        let limits = PlanLimits {
            max_prompt_chars: 1000,
        };
        let plan = plan(&parsed.request, vec![], &catalog, limits).unwrap();
        let (pending, _, _) = service
            .begin(&plan, None, CacheDirectives::default(), payer)
            .await?;
        match pending {
            Pending::Ready(g) => Ok(g),
            Pending::Waiting(w) => w.wait().await,
        }
    }

    fn failing() -> ApiError {
        ApiError::Upstream {
            message: "fal failed".into(),
        }
        .unavailable(Fallback::Failing)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn images_once_made_are_never_made_again_by_the_next_endpoint() {
        // Of Imagen's two jobs (4 + 1), the single one fails after the
        // other made its images.
        let backend = Arc::new(Scripted {
            fails: |job| (job.num_images == 1).then(failing),
            delay: Duration::from_millis(100),
            calls: StdMutex::new(Vec::new()),
        });
        let service = service(backend.clone()).await;

        let e = generate(&service, r#"{"prompt":"x","n":5}"#)
            .await
            .unwrap_err();

        assert!(matches!(e, ApiError::Upstream { .. }), "{e:?}");
        assert_eq!(e.fallback(), None, "the client sees the plain cause");
        let calls = backend.calls.lock().unwrap().clone();
        assert!(
            calls
                .iter()
                .all(|(e, _)| e == "fal-ai/imagen4/preview/fast"),
            "{calls:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_next_endpoint_gets_a_plan_of_its_own() {
        let backend = Arc::new(Scripted {
            fails: imagen_gone,
            delay: Duration::ZERO,
            calls: StdMutex::new(Vec::new()),
        });
        let service = service(backend.clone()).await;

        let g = generate(&service, r#"{"prompt":"x","n":5,"size":"1536x1024"}"#)
            .await
            .unwrap();

        assert_eq!(&*g.endpoint, "fal-ai/nano-banana-2");
        assert_eq!(g.size, "1264x848");
        assert_eq!(g.images.len(), 5);
        let mut on_nb2: Vec<u8> = backend
            .calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(e, _)| e == "fal-ai/nano-banana-2")
            .map(|(_, n)| *n)
            .collect();
        on_nb2.sort();
        assert_eq!(on_nb2, [1, 4]);
        assert_eq!(service.gone_endpoints()[0].0, "fal-ai/imagen4/preview/fast");
        // Marked gone: the next request goes straight to the successor.
        let before = backend.calls.lock().unwrap().len();
        generate(&service, r#"{"prompt":"y"}"#).await.unwrap();
        let calls = backend.calls.lock().unwrap().clone();
        assert_eq!(calls[before..], [("fal-ai/nano-banana-2".to_owned(), 1)]);
    }

    /// A payer for a new database key with a budget of `budget` micro-USD.
    async fn payer_with_budget(store: &Store, budget: u64) -> Payer {
        let (key, _secret) = store
            .create_key(crate::store::keys::NewKey {
                name: "fallback".into(),
                budget_micro_usd: Some(budget),
                ..Default::default()
            })
            .await
            .unwrap();
        Payer {
            account: Some(key.id.as_str().into()),
            key: Some(Arc::new(key)),
            request_id: None,
        }
    }

    fn imagen_gone(job: &Job) -> Option<ApiError> {
        (job.endpoint.full() == "fal-ai/imagen4/preview/fast").then(|| {
            ApiError::Upstream {
                message: "gone".into(),
            }
            .unavailable(Fallback::Gone)
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_budget_reserves_the_dearest_endpoint_of_the_chain_and_pays_the_one_that_served() {
        // imagen-4-fast with successors behind: Imagen 4 fast ($0.02), then
        // nano-banana-2 ($0.08 at 1K), ... Fallback may land on the dearer.
        let backend = Arc::new(Scripted {
            fails: imagen_gone,
            delay: Duration::ZERO,
            calls: StdMutex::new(Vec::new()),
        });
        let (service, store) = service_with_store(backend.clone()).await;
        let chain_max = {
            let settings = ModelSettings {
                successors: Successors::Behind,
                ..ModelSettings::default()
            };
            let catalog = settings.catalog().unwrap();
            let parsed = parse_generation_body(br#"{"prompt":"x"}"#).unwrap();
            let limits = PlanLimits {
                max_prompt_chars: 1000,
            };
            let plan = plan(&parsed.request, vec![], &catalog, limits).unwrap();
            assert_eq!(
                plan.model.primary().endpoint.full(),
                "fal-ai/imagen4/preview/fast"
            );
            service.max_cost(&plan)
        };
        assert!(chain_max >= MicroUsd(80_000), "{chain_max:?}");

        // A key that could pay Imagen but not the chain's dearest endpoint
        // is refused before any job.
        let short = payer_with_budget(&store, chain_max.0 - 1).await;
        let e = generate_for(&service, r#"{"prompt":"x"}"#, &short)
            .await
            .unwrap_err();
        assert!(matches!(e, ApiError::InsufficientQuota { .. }), "{e:?}");
        assert!(backend.calls.lock().unwrap().is_empty());

        // One that can: the gone Imagen moves it to nano-banana-2, and it
        // pays nano-banana-2's price, not the reservation nor Imagen's.
        let payer = payer_with_budget(&store, chain_max.0).await;
        let g = generate_for(&service, r#"{"prompt":"x"}"#, &payer)
            .await
            .unwrap();
        assert_eq!(&*g.endpoint, "fal-ai/nano-banana-2");
        assert_eq!(g.cost, MicroUsd(80_000));
        let key_id = payer.key.as_ref().unwrap().id.clone();
        let key = store.key(&key_id).await.unwrap().unwrap();
        assert_eq!(key.spent_micro_usd, 80_000);
        assert_eq!(key.reserved_micro_usd, 0, "the reservation settled");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn images_made_before_a_sibling_job_failed_are_paid_for() {
        // Imagen's jobs of 4 and 1: the 4 are made (fal bills them), then
        // the single job fails and the request with it.
        let backend = Arc::new(Scripted {
            fails: |job| (job.num_images == 1).then(failing),
            delay: Duration::from_millis(100),
            calls: StdMutex::new(Vec::new()),
        });
        let (service, store) = service_with_store(backend).await;
        let payer = payer_with_budget(&store, 1_000_000).await;

        let e = generate_for(&service, r#"{"prompt":"x","n":5}"#, &payer)
            .await
            .unwrap_err();

        assert!(matches!(e, ApiError::Upstream { .. }), "{e:?}");
        let key_id = payer.key.as_ref().unwrap().id.clone();
        let key = store.key(&key_id).await.unwrap().unwrap();
        assert_eq!(key.spent_micro_usd, 80_000, "4 images at $0.02");
        assert_eq!(key.reserved_micro_usd, 0, "the reservation settled");
    }

    #[test]
    fn a_gone_endpoint_is_skipped_for_a_while() {
        let gone = GoneEndpoints::new(Duration::from_millis(300));
        assert!(!gone.is_gone("fal-ai/x"));
        gone.mark("fal-ai/x");
        assert!(gone.is_gone("fal-ai/x"));
        assert!(!gone.is_gone("fal-ai/y"));
        assert_eq!(gone.list(), [("fal-ai/x".to_owned(), 1)]);
        std::thread::sleep(Duration::from_millis(350));
        assert!(!gone.is_gone("fal-ai/x"));
        assert!(gone.list().is_empty());
    }
}
