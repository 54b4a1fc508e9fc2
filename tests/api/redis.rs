//! Replicas sharing one Redis: the second-level cache, fleet-wide
//! single-flight, and serving on through a Redis outage. Against a real
//! `redis-server` started here on a free loopback port.
//!
//! Without the binary these tests say so and pass, unless
//! `IMAGE_GATEWAY_REQUIRE_REDIS` is set (scripts/test sets it, so CI cannot
//! skip them silently).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fake_fal::{FakeConfig, FakeFal, Op};
use futures_util::future::join_all;
use image_gateway::cache::CacheKey;
use image_gateway::config::{BackendChoice, ModelSettings, RedisUrl, Settings};
use image_gateway::openai::PlanLimits;
use serde_json::{Value, json};

use crate::helpers::*;

/// A `redis-server` on a free loopback port, killed on drop.
struct RedisServer {
    port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Start one, or `None` (with a message) when the binary is missing and
    /// the environment does not require it.
    async fn start() -> Option<RedisServer> {
        let present = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !present {
            assert!(
                std::env::var_os("IMAGE_GATEWAY_REQUIRE_REDIS").is_none(),
                "IMAGE_GATEWAY_REQUIRE_REDIS is set but redis-server is not installed (scripts/setup-test-deps installs it)"
            );
            eprintln!("SKIPPED: redis-server is not installed; the Redis tests did not run");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = RedisServer {
            port,
            child: None,
            dir: tempfile::tempdir().unwrap(),
        };
        server.launch().await;
        Some(server)
    }

    async fn launch(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        for _ in 0..200 {
            if let Ok(mut c) = self.connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("redis-server did not answer on port {}", self.port);
    }

    /// Stop it hard, as a crash would.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freeze or thaw it (SIGSTOP / SIGCONT): a Redis that accepts
    /// connections and never answers.
    fn signal(&self, name: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        let status = Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    async fn connection(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        redis::Client::open(self.url())?
            .get_multiplexed_async_connection()
            .await
    }

    async fn keys(&self, pattern: &str) -> Vec<String> {
        let mut c = self.connection().await.unwrap();
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg(pattern)
            .query_async(&mut c)
            .await
            .unwrap();
        keys.sort();
        keys
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Settings for one replica of a fleet sharing `redis`, with short timeouts.
fn shared(redis: &RedisServer) -> impl FnOnce(&mut Settings) + use<> {
    let url = redis.url();
    move |s: &mut Settings| {
        s.cache.redis_url = RedisUrl::new(url);
        s.cache.redis_timeout_ms = 200;
        s.cache.redis_lock_ttl_ms = 2_000;
        s.cache.redis_wait_timeout_ms = 10_000;
    }
}

fn slow_fal(queue_ms: u64) -> FakeFal {
    FakeFal::start(
        "127.0.0.1:0",
        FakeConfig {
            queue_ms,
            ..FakeConfig::default()
        },
        1,
    )
    .unwrap()
}

/// The Redis key of the lock for a request body, as the gateway names it.
fn lock_key(body: &Value) -> String {
    let parsed = image_gateway::openai::parse_generation_body(body.to_string().as_bytes()).unwrap();
    let catalog = ModelSettings::default().catalog().unwrap();
    let plan = image_gateway::openai::plan(
        &parsed.request,
        parsed.unknown_fields,
        &catalog,
        PlanLimits {
            max_prompt_chars: 32_000,
        },
    )
    .unwrap();
    format!("image-gateway:fal:lock:{}", CacheKey::of(&plan, None).hex())
}

fn header(res: &reqwest::Response, name: &str) -> Option<String> {
    res.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

fn total(metrics: &str, name: &str, label: &str, values: &[&str]) -> f64 {
    values
        .iter()
        .map(|v| series(metrics, name, &[(label, v)]).unwrap_or(0.0))
        .sum()
}

const REDIS_OPS: [&str; 8] = [
    "get", "set", "lock", "unlock", "refresh", "poll", "ping", "decode",
];

async fn ready_redis_state(app: &TestApp) -> String {
    let (status, _, body) = json(app.get("/readyz").await).await;
    assert_eq!(status, 200, "Redis never makes a replica unready: {body}");
    body["redis"].as_str().unwrap().to_owned()
}

async fn wait_for_redis_state(app: &TestApp, want: &str) {
    for _ in 0..100 {
        if ready_redis_state(app).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("/readyz never reported redis {want}");
}

#[actix_web::test]
async fn identical_concurrent_requests_spread_over_two_replicas_reach_fal_once() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let fal = slow_fal(1_000);
    let a = spawn_replica(&fal, shared(&redis)).await;
    let b = spawn_replica(&fal, shared(&redis)).await;
    let body = json!({"prompt":"one fleet, one image","response_format":"b64_json"});

    let responses = join_all((0..20).map(|i| {
        let replica = if i % 2 == 0 { &a } else { &b };
        replica.post_generation(body.clone())
    }))
    .await;

    let mut labels = Vec::new();
    let mut bodies = Vec::new();
    for res in responses {
        assert_eq!(res.status(), 200);
        labels.push(header(&res, "x-cache").unwrap());
        bodies.push(res.bytes().await.unwrap());
    }
    assert_eq!(fal.count(Op::Submit), 1, "{labels:?}");
    assert!(bodies.iter().all(|b| *b == bodies[0]), "identical answers");
    assert_eq!(
        labels.iter().filter(|l| *l == "MISS").count(),
        1,
        "{labels:?}"
    );
    assert!(
        labels
            .iter()
            .all(|l| ["MISS", "COALESCED", "HIT"].contains(&l.as_str()))
    );
    // One replica generated; the other waited for its entry in Redis.
    let waits = |m: &str| {
        series(
            m,
            "image_gateway_l2_cache_waits_total",
            &[("outcome", "answered")],
        )
    };
    let (ma, mb) = (a.metrics().await, b.metrics().await);
    assert_eq!(waits(&ma).unwrap() + waits(&mb).unwrap(), 1.0);
    // One entry, stored once, and no lock left behind.
    assert_eq!(redis.keys("image-gateway:fal:entry:*").await.len(), 1);
    assert!(redis.keys("image-gateway:fal:lock:*").await.is_empty());
}

#[actix_web::test]
async fn a_second_replica_answers_from_redis_with_the_same_bytes() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let fal = slow_fal(0);
    let a = spawn_replica(&fal, shared(&redis)).await;
    let b = spawn_replica(&fal, shared(&redis)).await;
    let body =
        json!({"prompt":"shared lighthouse","size":"1792x1024","n":2,"response_format":"b64_json"});

    let first = a.post_generation(body.clone()).await;
    assert_eq!(header(&first, "x-cache").as_deref(), Some("MISS"));
    assert_eq!(header(&first, "x-cache-level"), None);
    let first_headers = first.headers().clone();
    let first = first.bytes().await.unwrap();
    let second = b.post_generation(body.clone()).await;
    let second_headers = second.headers().clone();
    let second = second.bytes().await.unwrap();
    let third = b.post_generation(body.clone()).await;
    let third_headers = third.headers().clone();
    let third = third.bytes().await.unwrap();

    assert_eq!(second_headers["x-cache"], "HIT");
    assert_eq!(second_headers["x-cache-level"], "l2");
    assert!(
        second_headers["age"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .is_ok()
    );
    assert_eq!(second, first, "byte-identical across replicas");
    // From then on, replica b answers from its own memory.
    assert_eq!(third_headers["x-cache"], "HIT");
    assert_eq!(third_headers["x-cache-level"], "l1");
    assert_eq!(third, first);
    assert_eq!(fal.count(Op::Submit), 1);
    // Only the replica that made the job paid; the other's answers saved
    // what it cost (two Imagen 4 fast images: $0.04 each time).
    assert_eq!(first_headers["x-image-gateway-cost-usd"], "0.04");
    assert_eq!(second_headers["x-image-gateway-cost-usd"], "0");
    assert_eq!(third_headers["x-image-gateway-cost-usd"], "0");

    let (ma, mb) = (a.metrics().await, b.metrics().await);
    let saved = series(
        &mb,
        "image_gateway_spend_saved_usd_total",
        &[("model", "imagen-4-fast"), ("reason", "cache")],
    );
    assert!(saved.is_some_and(|s| (s - 0.08).abs() < 1e-9), "{saved:?}");
    assert_eq!(
        series(
            &ma,
            "image_gateway_spend_usd_total",
            &[("model", "imagen-4-fast")]
        ),
        Some(0.04)
    );
    let l2 = |m: &str, r| series(m, "image_gateway_l2_cache_lookups_total", &[("result", r)]);
    assert_eq!(l2(&ma, "miss"), Some(1.0));
    assert_eq!(l2(&mb, "hit"), Some(1.0));
    assert_eq!(
        series(
            &mb,
            "image_gateway_cache_lookups_total",
            &[("result", "hit")]
        ),
        Some(2.0)
    );

    // One value holds the whole answer, its images as raw bytes (smaller
    // than their base64), with the cache's TTL.
    let keys = redis.keys("image-gateway:fal:entry:*").await;
    assert_eq!(keys.len(), 1);
    let mut c = redis.connection().await.unwrap();
    let stored: usize = redis::cmd("STRLEN")
        .arg(&keys[0])
        .query_async(&mut c)
        .await
        .unwrap();
    let answer: Value = serde_json::from_slice(&first).unwrap();
    let b64_total: usize = answer["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["b64_json"].as_str().unwrap().len())
        .sum();
    assert!(
        stored < b64_total * 3 / 4 + 256,
        "stored {stored} bytes for {b64_total} bytes of base64"
    );
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&keys[0])
        .query_async(&mut c)
        .await
        .unwrap();
    let ttl_ms = Settings::default().cache.ttl_seconds as i64 * 1000;
    assert!(pttl > ttl_ms - 60_000 && pttl <= ttl_ms, "PTTL {pttl}");
}

#[actix_web::test]
async fn links_to_images_a_replica_holds_itself_are_served_by_the_replica_that_answers() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let fal = slow_fal(0);
    let local = |redis: &RedisServer| {
        let shared = shared(redis);
        move |s: &mut Settings| {
            shared(s);
            s.backend = BackendChoice::Local;
        }
    };
    let a = spawn_replica(&fal, local(&redis)).await;
    let b = spawn_replica(&fal, local(&redis)).await;
    let body = json!({"prompt":"a file only a holds","response_format":"url"});

    let (_, _, from_a) = json(a.post_generation(body.clone()).await).await;
    let res = b.post_generation(body).await;
    assert_eq!(header(&res, "x-cache-level").as_deref(), Some("l2"));
    let (_, _, from_b) = json(res).await;

    let url_a = from_a["data"][0]["url"].as_str().unwrap();
    let url_b = from_b["data"][0]["url"].as_str().unwrap();
    assert!(url_a.starts_with(&a.address), "{url_a}");
    assert!(
        url_b.starts_with(&b.address),
        "{url_b}: b links to its own copy"
    );
    let image_a = a.client.get(url_a).send().await.unwrap();
    let image_b = b.client.get(url_b).send().await.unwrap();
    assert_eq!(image_b.status(), 200);
    assert_eq!(
        image_a.bytes().await.unwrap(),
        image_b.bytes().await.unwrap()
    );
    assert!(redis.keys("image-gateway:local:entry:*").await.len() == 1);
}

#[actix_web::test]
async fn replicas_serve_through_a_redis_outage_and_share_again_once_it_is_back() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let fal = slow_fal(0);
    let a = spawn_replica(&fal, shared(&redis)).await;
    let b = spawn_replica(&fal, shared(&redis)).await;
    let before = json!({"prompt":"before the outage"});
    assert_eq!(
        header(&a.post_generation(before.clone()).await, "x-cache").as_deref(),
        Some("MISS")
    );
    assert_eq!(
        header(&b.post_generation(before.clone()).await, "x-cache-level").as_deref(),
        Some("l2")
    );
    assert_eq!(ready_redis_state(&a).await, "up");

    redis.kill();
    for (i, replica) in [&a, &b, &a, &b].into_iter().enumerate() {
        let res = replica
            .post_generation(json!({"prompt": format!("during the outage {i}")}))
            .await;
        assert_eq!(res.status(), 200, "request {i} during the outage");
        assert_eq!(header(&res, "x-cache").as_deref(), Some("MISS"));
    }
    // What b already holds in memory is still served.
    assert_eq!(
        header(&b.post_generation(before).await, "x-cache-level").as_deref(),
        Some("l1")
    );
    for replica in [&a, &b] {
        wait_for_redis_state(replica, "down").await;
        let m = replica.metrics().await;
        assert!(
            total(
                &m,
                "image_gateway_redis_errors_total",
                "operation",
                &REDIS_OPS
            ) >= 1.0
        );
        assert!(
            series(
                &m,
                "image_gateway_l2_cache_lookups_total",
                &[("result", "error")]
            )
            .unwrap()
                >= 1.0
        );
    }
    assert_eq!(fal.count(Op::Submit), 5);

    redis.launch().await;
    wait_for_redis_state(&a, "up").await;
    wait_for_redis_state(&b, "up").await;
    let after = json!({"prompt":"after the outage"});
    assert_eq!(
        header(&a.post_generation(after.clone()).await, "x-cache").as_deref(),
        Some("MISS")
    );
    let res = b.post_generation(after).await;
    assert_eq!(header(&res, "x-cache").as_deref(), Some("HIT"));
    assert_eq!(header(&res, "x-cache-level").as_deref(), Some("l2"));
    assert_eq!(fal.count(Op::Submit), 6);
}

#[actix_web::test]
async fn a_stalled_redis_is_given_up_on_within_its_timeout_and_skipped_until_it_answers() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let fal = slow_fal(0);
    let a = spawn_replica(&fal, shared(&redis)).await;
    let b = spawn_replica(&fal, shared(&redis)).await;
    assert_eq!(ready_redis_state(&a).await, "up");

    redis.signal("STOP");
    let stalled = json!({"prompt":"while redis is stalled"});
    let first = a.post_generation(stalled.clone()).await;
    let second = a.post_generation(json!({"prompt":"still stalled"})).await;
    let m = a.metrics().await;
    let state = ready_redis_state(&a).await;
    redis.signal("CONT");

    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "x-cache").as_deref(), Some("MISS"));
    assert_eq!(second.status(), 200);
    assert_eq!(state, "down");
    assert!(
        total(
            &m,
            "image_gateway_redis_errors_total",
            "operation",
            &REDIS_OPS
        ) >= 1.0
    );
    assert_eq!(
        series(
            &m,
            "image_gateway_l2_cache_lookups_total",
            &[("result", "error")]
        ),
        Some(2.0)
    );

    wait_for_redis_state(&a, "up").await;
    wait_for_redis_state(&b, "up").await;
    let after = json!({"prompt":"redis thawed"});
    assert_eq!(a.post_generation(after.clone()).await.status(), 200);
    let res = b.post_generation(after).await;
    assert_eq!(header(&res, "x-cache-level").as_deref(), Some("l2"));
}

#[actix_web::test]
async fn a_streamed_request_is_answered_from_redis_too() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let fal = slow_fal(0);
    let a = spawn_replica(&fal, shared(&redis)).await;
    let b = spawn_replica(&fal, shared(&redis)).await;
    let body = json!({"prompt":"streamed from the fleet","response_format":"b64_json"});

    let (_, _, generated) = json(a.post_generation(body.clone()).await).await;
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let res = b.post_generation(streamed).await;

    assert_eq!(header(&res, "x-cache").as_deref(), Some("HIT"));
    assert_eq!(header(&res, "x-cache-level").as_deref(), Some("l2"));
    let text = res.text().await.unwrap();
    let event: Value = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .next()
        .unwrap();
    assert_eq!(event["type"], "image_generation.completed");
    assert_eq!(event["b64_json"], generated["data"][0]["b64_json"]);
    assert_eq!(fal.count(Op::Submit), 1);
}

#[actix_web::test]
async fn a_crashed_owners_lock_holds_others_back_only_until_it_expires() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let fal = slow_fal(0);
    let a = spawn_replica(&fal, shared(&redis)).await;
    let body = json!({"prompt":"the owner died"});
    // A replica took the lock and died: nobody refreshes or releases it.
    let mut c = redis.connection().await.unwrap();
    redis::cmd("SET")
        .arg(lock_key(&body))
        .arg("crashed-replica")
        .arg("PX")
        .arg(3_000)
        .query_async::<()>(&mut c)
        .await
        .unwrap();

    let request = a.post_generation(body);
    tokio::pin!(request);
    let early = tokio::select! {
        res = &mut request => Some(res),
        () = tokio::time::sleep(Duration::from_millis(500)) => None,
    };
    assert!(early.is_none(), "answered while the lock was held");
    assert_eq!(fal.count(Op::Submit), 0, "waits instead of generating");
    let res = request.await;

    assert_eq!(res.status(), 200);
    // It waited, then generated the image itself: a miss.
    assert_eq!(header(&res, "x-cache").as_deref(), Some("MISS"));
    assert_eq!(fal.count(Op::Submit), 1);
    let m = a.metrics().await;
    assert_eq!(
        series(
            &m,
            "image_gateway_l2_cache_waits_total",
            &[("outcome", "abandoned")]
        ),
        Some(1.0)
    );
    assert_eq!(redis.keys("image-gateway:fal:entry:*").await.len(), 1);
}

#[actix_web::test]
async fn a_replica_stops_waiting_for_a_stuck_owner_and_generates_itself() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let fal = slow_fal(0);
    let configure = shared(&redis);
    let a = spawn_replica(&fal, |s| {
        configure(s);
        s.cache.redis_wait_timeout_ms = 300;
    })
    .await;
    let body = json!({"prompt":"the owner is stuck"});
    let mut c = redis.connection().await.unwrap();
    redis::cmd("SET")
        .arg(lock_key(&body))
        .arg("stuck-replica")
        .arg("PX")
        .arg(60_000)
        .query_async::<()>(&mut c)
        .await
        .unwrap();

    let res = a.post_generation(body).await;

    assert_eq!(res.status(), 200);
    assert_eq!(fal.count(Op::Submit), 1);
    let m = a.metrics().await;
    assert_eq!(
        series(
            &m,
            "image_gateway_l2_cache_waits_total",
            &[("outcome", "timeout")]
        ),
        Some(1.0)
    );
}

#[actix_web::test]
async fn readiness_reports_redis_but_never_fails_because_of_it() {
    let off = spawn_app().await;
    assert_eq!(ready_redis_state(&off).await, "disabled");

    // Nothing listens there: the gateway starts, serves, and says so.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let app = spawn_app_with(|s| {
        s.cache.redis_url = RedisUrl::new(format!("redis://127.0.0.1:{closed}/0"));
        s.cache.redis_timeout_ms = 100;
        s.cache.redis_lock_ttl_ms = 1_000;
    })
    .await;
    let res = app.post_generation(json!({"prompt":"no redis"})).await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "x-cache").as_deref(), Some("MISS"));
    wait_for_redis_state(&app, "down").await;
    let m = app.metrics().await;
    assert!(
        total(
            &m,
            "image_gateway_redis_errors_total",
            "operation",
            &REDIS_OPS
        ) >= 1.0
    );
    // The local cache still works.
    let res = app.post_generation(json!({"prompt":"no redis"})).await;
    assert_eq!(header(&res, "x-cache-level").as_deref(), Some("l1"));
    assert_eq!(app.fal.count(Op::Submit), 1);
}

#[actix_web::test]
async fn a_failed_generation_is_answered_to_waiting_replicas_not_run_again() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let fal = slow_fal(800);
    let a = spawn_replica(&fal, shared(&redis)).await;
    let b = spawn_replica(&fal, shared(&redis)).await;
    // The one job's result is a content-policy rejection.
    fal.inject(fake_fal::Fault {
        op: Op::Result,
        times: 1,
        action: fake_fal::FaultAction::Respond {
            status: 422,
            headers: vec![("x-fal-request-id".into(), "x".into())],
            body: json!({"detail":[{"loc":["body","prompt"],"msg":"flagged by the safety checker","type":"content_policy_violation"}]}).to_string(),
        },
    });
    let body = json!({"prompt":"refused everywhere"});

    let first = a.post_generation(body.clone());
    let second = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        b.post_generation(body.clone()).await
    };
    let (first, second) = tokio::join!(first, second);

    for res in [first, second] {
        let err = expect_error(res, 400).await;
        assert_eq!(err["code"], "content_policy_violation");
    }
    assert_eq!(fal.count(Op::Submit), 1, "the generation ran once");
    assert_eq!(
        series(
            &b.metrics().await,
            "image_gateway_l2_cache_waits_total",
            &[("outcome", "failed")]
        ),
        Some(1.0)
    );
    // Errors are not cached: the next request generates again.
    let res = b.post_generation(body).await;
    assert_eq!(res.status(), 200);
    assert_eq!(fal.count(Op::Submit), 2);
}

#[actix_web::test]
async fn a_replica_that_generates_after_redis_fails_mid_wait_answers_miss() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let fal = slow_fal(1_500);
    let a = spawn_replica(&fal, shared(&redis)).await;
    let b = spawn_replica(&fal, shared(&redis)).await;
    let body = json!({"prompt":"redis goes away mid-wait"});

    let first = a.post_generation(body.clone());
    let second = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let res = b.post_generation(body.clone());
        let outage = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            redis.kill();
        };
        tokio::join!(res, outage).0
    };
    let (first, second) = tokio::join!(first, second);

    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "x-cache").as_deref(), Some("MISS"));
    assert_eq!(second.status(), 200);
    assert_eq!(fal.count(Op::Submit), 2, "b generated itself");
    assert_eq!(
        header(&second, "x-cache").as_deref(),
        Some("MISS"),
        "b generated the image: not a coalesced answer"
    );
    let m = b.metrics().await;
    let lookups = |result| {
        series(
            &m,
            "image_gateway_cache_lookups_total",
            &[("result", result)],
        )
    };
    assert_eq!(lookups("miss"), Some(1.0));
    assert_eq!(lookups("coalesced"), Some(0.0));
}
