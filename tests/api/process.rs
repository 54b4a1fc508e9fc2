//! The real `image-gateway` binary as a process: flags, start-up failures,
//! graceful shutdown on SIGTERM/SIGINT, and secrets kept out of every log
//! line, answer and metric.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fake_fal::{FakeConfig, FakeFal, Fault, FaultAction, Op};
use serde_json::json;
use sha2::Digest;

use crate::helpers::short;

const BIN: &str = env!("CARGO_BIN_EXE_image-gateway");

struct Gateway {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Gateway {
    /// Start the binary with `env` (plus a free listen port) and wait until
    /// it answers /healthz.
    async fn start(env: &[(&str, String)]) -> Gateway {
        image_gateway::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("gateway.log");
        let port = free_port();
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(BIN)
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("IMAGE_GATEWAY__SERVER__LISTEN", format!("127.0.0.1:{port}"))
            .env("IMAGE_GATEWAY__SERVER__WORKERS", "1")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap();
        let gw = Gateway {
            child,
            port,
            log,
            _dir: dir,
        };
        let client = reqwest::Client::new();
        for _ in 0..200 {
            if client
                .get(gw.url("/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                return gw;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("gateway did not start: {}", gw.logs());
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Wait for the process to exit; its exit code and how long it took.
    async fn wait_exit(&mut self, limit: Duration) -> (Option<i32>, Duration) {
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code(), started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = self.child.kill();
        panic!(
            "the gateway did not exit within {limit:?}: {}",
            short(&self.logs())
        );
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fal_env(fal: &FakeFal) -> Vec<(&'static str, String)> {
    vec![
        ("FAL_KEY", "fal-key-SECRET-1234".into()),
        ("IMAGE_GATEWAY__FAL__QUEUE_URL", fal.queue_url()),
        ("IMAGE_GATEWAY__FAL__RUN_URL", fal.run_url()),
        ("IMAGE_GATEWAY__FAL__RETRY_BASE_DELAY_MS", "5".into()),
    ]
}

#[actix_web::test]
async fn no_secret_reaches_logs_answers_or_metrics_even_at_trace_level() {
    let fal = FakeFal::start("127.0.0.1:0", FakeConfig::default(), 1).unwrap();
    let hashed_key = "sk-hashed-SECRET-9012";
    let hash = hex::encode(sha2::Sha256::digest(hashed_key.as_bytes()));
    let mut secrets = vec![
        "fal-key-SECRET-1234".to_owned(),
        "sk-client-SECRET-5678".to_owned(),
        hashed_key.to_owned(),
        "sk-wrong-SECRET-3456".to_owned(),
        "redis-SECRET-7777".to_owned(),
        "admin-SECRET-2468-abcdefgh".to_owned(),
        "admin-wrong-SECRET-1357".to_owned(),
        crate::postgres::PG_PASSWORD.to_owned(),
    ];
    // Keys and the ledger in PostgreSQL, reached with a password.
    let pg = crate::postgres::PostgresServer::start().await;
    // A shared cache that is down all along: its outage is logged (once),
    // its password never.
    let redis_url = format!("redis://:redis-SECRET-7777@127.0.0.1:{}/0", free_port());
    for format in ["text", "json"] {
        let mut env = fal_env(&fal);
        env.extend([
            ("RUST_LOG", "trace".to_owned()),
            ("IMAGE_GATEWAY__LOG__FORMAT", format.to_owned()),
            (
                "IMAGE_GATEWAY__AUTH__API_KEYS",
                format!("sk-client-SECRET-5678,sha256:{hash}"),
            ),
            ("IMAGE_GATEWAY__METRICS__PUBLIC", "true".to_owned()),
            ("IMAGE_GATEWAY__CACHE__REDIS_URL", redis_url.clone()),
            (
                "IMAGE_GATEWAY__AUTH__ADMIN_KEY",
                "admin-SECRET-2468-abcdefgh".to_owned(),
            ),
        ]);
        if let Some(pg) = &pg {
            let url = pg.create_database(&format!("secrets_{format}")).await;
            env.push(("IMAGE_GATEWAY__DATABASE__URL", url));
        }
        let mut gw = Gateway::start(&env).await;
        let client = reqwest::Client::new();
        let mut seen = String::new();
        // A database key, made through the admin API (its secret is in the
        // answer, and nowhere else after), and a wrong admin key.
        let made: serde_json::Value = client
            .post(gw.url("/admin/v1/keys"))
            .bearer_auth("admin-SECRET-2468-abcdefgh")
            .json(&json!({"name": "secrets", "budget_usd": 1}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let db_key = made["key"].as_str().unwrap().to_owned();
        secrets.push(db_key.clone());
        let res = client
            .get(gw.url("/admin/v1/keys"))
            .bearer_auth("admin-wrong-SECRET-1357")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401);
        seen.push_str(&format!("{:?}", res.headers()));
        seen.push_str(&res.text().await.unwrap());
        for path in ["/admin/v1/keys", "/admin/v1/spend?group_by=model"] {
            let res = client
                .get(gw.url(path))
                .bearer_auth("admin-SECRET-2468-abcdefgh")
                .send()
                .await
                .unwrap();
            seen.push_str(&res.text().await.unwrap());
        }
        let calls: Vec<(&str, serde_json::Value, Option<Fault>)> = vec![
            (
                "sk-client-SECRET-5678",
                json!({"prompt":"one","response_format":"b64_json"}),
                None,
            ),
            (db_key.as_str(), json!({"prompt":"db key"}), None),
            ("sk-hashed-SECRET-9012", json!({"prompt":"two"}), None),
            ("sk-wrong-SECRET-3456", json!({"prompt":"three"}), None),
            (
                "sk-client-SECRET-5678",
                json!({"prompt":"four"}),
                Some(Fault {
                    op: Op::Submit,
                    times: 1,
                    action: FaultAction::Respond {
                        status: 401,
                        headers: vec![("x-fal-request-id".into(), "x".into())],
                        body: r#"{"detail":"Invalid key fal-key-SECRET-1234"}"#.into(),
                    },
                }),
            ),
            (
                "sk-client-SECRET-5678",
                json!({"prompt":"five"}),
                Some(Fault {
                    op: Op::Result,
                    times: 1,
                    action: FaultAction::Respond {
                        status: 500,
                        headers: vec![("x-fal-request-id".into(), "x".into())],
                        body: "Traceback sk-client-SECRET-5678".into(),
                    },
                }),
            ),
            (
                "sk-client-SECRET-5678",
                json!({"prompt":"six","stream":true}),
                None,
            ),
        ];
        for (key, body, fault) in calls {
            if let Some(f) = fault {
                fal.inject(f);
            }
            let res = client
                .post(gw.url("/v1/images/generations"))
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .unwrap();
            seen.push_str(&format!("{:?}", res.headers()));
            seen.push_str(&res.text().await.unwrap());
        }
        for path in ["/metrics", "/readyz"] {
            let res = client.get(gw.url(path)).send().await.unwrap();
            seen.push_str(&res.text().await.unwrap());
        }
        gw.signal("TERM");
        let (code, _) = gw.wait_exit(Duration::from_secs(20)).await;
        assert_eq!(code, Some(0));

        let logs = gw.logs();
        assert!(
            logs.contains("request served") || logs.contains("request refused"),
            "trace logging was active"
        );
        assert!(
            logs.to_lowercase().contains("trace"),
            "trace-level lines were written"
        );
        assert_eq!(
            logs.matches("Redis is unreachable").count(),
            1,
            "{format}: one line per outage"
        );
        if pg.is_some() {
            assert!(
                logs.contains("postgres://[redacted]@127.0.0.1"),
                "{format}: the database in use is logged, without its password"
            );
        }
        for secret in &secrets {
            assert!(!logs.contains(secret), "{format} logs leak {secret}");
            assert!(!seen.contains(secret), "answers or metrics leak {secret}");
        }
        // The upstream calls carried the key: the secret was really in play.
        assert!(
            fal.calls()
                .iter()
                .any(|c| c.authorization.as_deref() == Some("Key fal-key-SECRET-1234"))
        );
    }

    let out = Command::new(BIN)
        .arg("--check-config")
        .env("FAL_KEY", "fal-key-SECRET-1234")
        .env("IMAGE_GATEWAY__AUTH__API_KEYS", "sk-client-SECRET-5678")
        .env("IMAGE_GATEWAY__CACHE__REDIS_URL", &redis_url)
        .env(
            "IMAGE_GATEWAY__AUTH__ADMIN_KEY",
            "admin-SECRET-2468-abcdefgh",
        )
        .env(
            "IMAGE_GATEWAY__DATABASE__URL",
            format!(
                "postgres://gw:{}@127.0.0.1:1/gw",
                crate::postgres::PG_PASSWORD
            ),
        )
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("[redacted]") && text.contains("backend in use: fal"),
        "{text}"
    );
    for secret in &secrets {
        assert!(!text.contains(secret), "--check-config leaks {secret}");
    }
}

type InFlight = tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>;

/// A gateway (with `grace` seconds of shutdown grace) in front of a fake fal
/// whose jobs take `queue_ms`, with one generation under way.
async fn with_a_request_in_flight(queue_ms: u64, grace: u32) -> (FakeFal, Gateway, InFlight) {
    let config = FakeConfig {
        queue_ms,
        ..FakeConfig::default()
    };
    let fal = FakeFal::start("127.0.0.1:0", config, 1).unwrap();
    let mut env = fal_env(&fal);
    env.push((
        "IMAGE_GATEWAY__SERVER__SHUTDOWN_GRACE_SECONDS",
        grace.to_string(),
    ));
    let gw = Gateway::start(&env).await;
    let url = gw.url("/v1/images/generations");
    let request = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .json(&json!({"prompt":"in flight at shutdown"}))
            .send()
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    (fal, gw, request)
}

#[actix_web::test]
async fn sigterm_and_sigint_let_in_flight_requests_finish() {
    for signal in ["TERM", "INT"] {
        let (fal, mut gw, request) = with_a_request_in_flight(1_500, 10).await;

        gw.signal(signal);
        let res = request.await.unwrap().unwrap();
        let (code, took) = gw.wait_exit(Duration::from_secs(10)).await;

        assert_eq!(res.status(), 200, "SIG{signal}");
        assert_eq!(code, Some(0), "SIG{signal}");
        assert!(
            took < Duration::from_secs(5),
            "SIG{signal}: exit took {took:?}"
        );
        assert_eq!(fal.count(Op::Cancel), 0);
        // Stopped accepting: a new connection is refused.
        assert!(
            reqwest::Client::new()
                .get(gw.url("/healthz"))
                .send()
                .await
                .is_err()
        );
    }
}

#[actix_web::test]
async fn readyz_answers_503_from_the_moment_shutdown_begins() {
    let fal = FakeFal::start(
        "127.0.0.1:0",
        FakeConfig {
            queue_ms: 2_000,
            ..FakeConfig::default()
        },
        1,
    )
    .unwrap();
    let admin = free_port();
    let mut env = fal_env(&fal);
    env.push((
        "IMAGE_GATEWAY__METRICS__LISTEN",
        format!("127.0.0.1:{admin}"),
    ));
    env.push(("IMAGE_GATEWAY__SERVER__SHUTDOWN_GRACE_SECONDS", "10".into()));
    let mut gw = Gateway::start(&env).await;
    let readyz = format!("http://127.0.0.1:{admin}/readyz");
    let client = reqwest::Client::new();
    assert_eq!(client.get(&readyz).send().await.unwrap().status(), 200);
    let url = gw.url("/v1/images/generations");
    let request = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .json(&json!({"prompt":"in flight while draining"}))
            .send()
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    gw.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The load balancer's probe, on a new connection, during the grace period.
    let during = reqwest::Client::new().get(&readyz).send().await.unwrap();
    assert_eq!(during.status(), 503, "not ready once shutdown began");
    let body: serde_json::Value = during.json().await.unwrap();
    assert_eq!(body["status"], "shutting_down");

    assert_eq!(
        request.await.unwrap().unwrap().status(),
        200,
        "in flight finishes"
    );
    let (code, _) = gw.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(code, Some(0));
}

#[actix_web::test]
async fn after_the_grace_period_remaining_jobs_are_cancelled_and_answered_503() {
    let (fal, mut gw, request) = with_a_request_in_flight(60_000, 1).await;

    gw.signal("TERM");
    let res = request.await.unwrap().unwrap();
    let (code, took) = gw.wait_exit(Duration::from_secs(15)).await;

    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "1");
    assert_eq!(res.headers()["x-should-retry"], "true");
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "server_shutting_down");
    assert_eq!(code, Some(0));
    assert!(took < Duration::from_secs(8), "{took:?}");
    assert_eq!(
        fal.cancelled_jobs(),
        1,
        "the fal job was cancelled upstream"
    );
}

#[test]
fn flags_and_bad_configuration_are_explained() {
    let version = Command::new(BIN).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).contains(env!("CARGO_PKG_VERSION")));
    let help = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in ["--config", "--check-config", "--version", "--help"] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }

    let cases: [(&[(&str, &str)], &str); 7] = [
        (
            &[("IMAGE_GATEWAY__SERVER__LISTEN", "nowhere")],
            "server.listen",
        ),
        (&[("IMAGE_GATEWAY__BACKEND", "fal")], "backend"),
        (
            &[("IMAGE_GATEWAY__FAL__QUEUE_URL", "not a url")],
            "fal.queue_url",
        ),
        (
            &[("IMAGE_GATEWAY__CACHE__TTL_SECONDS", "soon")],
            "cache.ttl_seconds",
        ),
        (
            &[("IMAGE_GATEWAY__BACKEND", "gpu")],
            "`auto`, `fal`, `local`",
        ),
        (
            &[("IMAGE_GATEWAY__SERVER__WORKERS", "100000")],
            "from 0 to 1024",
        ),
        // Read by nobody: left alone it would leave the gateway open.
        (
            &[("IMAGE_GATEWAY_AUTH__API_KEYS", "sk-one")],
            "IMAGE_GATEWAY__AUTH__API_KEYS",
        ),
    ];
    for (env, needle) in cases {
        for args in [&[][..], &["--check-config"][..]] {
            let out = Command::new(BIN)
                .env_clear()
                .envs(env.iter().copied())
                .args(args)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{env:?} {args:?}: {err}");
            assert!(err.contains(needle), "{env:?} {args:?}: {err}");
            assert_eq!(err.trim().lines().count(), 1, "{env:?} {args:?}: {err}");
        }
    }
    let missing = Command::new(BIN)
        .args(["--config", "/nonexistent/gateway.toml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("does not exist"));
}

#[actix_web::test]
async fn the_binary_starts_on_the_offline_backend_without_a_fal_key() {
    let mut gw = Gateway::start(&[]).await;
    let res = reqwest::Client::new()
        .post(gw.url("/v1/images/generations"))
        .json(&json!({"prompt":"offline","size":"1024x1792"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-image-gateway-backend"], "local");
    gw.signal("TERM");
    gw.wait_exit(Duration::from_secs(10)).await;
    let logs = gw.logs();
    assert!(
        logs.contains("OFFLINE MODE"),
        "the warning banner is logged"
    );
    assert!(
        logs.contains("open to anyone"),
        "the open-gateway warning is logged"
    );
}

#[actix_web::test]
async fn no_form_of_redis_password_is_printed_at_start_in_check_config_or_errors() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("no-redis.sock");
    let socket = socket.display();
    let closed = free_port();
    // Every credential form the redis crate reads; none reachable, so each
    // gateway also logs its "Redis is unreachable" warning.
    let accepted = [
        format!("redis://user:pw-SECRET-1@127.0.0.1:{closed}/0"),
        format!("redis://:pw-SECRET-2@127.0.0.1:{closed}"),
        format!("redis://:pw%2FSECRET%40-3@127.0.0.1:{closed}/1"),
        format!("redis://127.0.0.1:{closed}/0?password=pw-SECRET-4"),
        format!("redis://u:pw@SECRET@5@127.0.0.1:{closed}/3"),
        format!("unix://{socket}?pass=pw-SECRET-6"),
        format!("unix://{socket}?db=2&user=bob-SECRET-7&pass=pw-SECRET-7"),
        format!("redis+unix://{socket}?pass=pw-SECRET-8"),
    ];
    // Refused at start-up: the error names the key, never the password.
    let refused = [
        format!("redis://:pw/SECRET/9@127.0.0.1:{closed}"),
        format!("redis://:pw?SECRET?10@127.0.0.1:{closed}"),
        format!("redis://:pw#SECRET#11@127.0.0.1:{closed}"),
        format!("rediss://:pw-SECRET-12@127.0.0.1:{closed}"),
        format!("valkey://default:pw-SECRET-13@127.0.0.1:{closed}"),
        "pw-SECRET-14".to_owned(),
    ];

    let check_config = |url: &str| {
        let out = Command::new(BIN)
            .env_clear()
            .arg("--check-config")
            .env("IMAGE_GATEWAY__CACHE__REDIS_URL", url)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text)
    };
    for url in &accepted {
        let (code, text) = check_config(url);
        assert_eq!(code, Some(0), "{url}: {text}");
        assert!(text.contains("redis_url = \""), "{text}");
        assert!(
            !text.contains("SECRET"),
            "--check-config prints {url}: {text}"
        );
    }
    for url in &refused {
        let (code, text) = check_config(url);
        assert_eq!(code, Some(2), "{url}: {text}");
        assert!(text.contains("cache.redis_url"), "{text}");
        assert!(
            !text.contains("SECRET"),
            "--check-config prints {url}: {text}"
        );
        let out = Command::new(BIN)
            .env_clear()
            .env("IMAGE_GATEWAY__CACHE__REDIS_URL", url)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{url}: {text}");
        assert!(
            !text.contains("SECRET"),
            "start-up error prints {url}: {text}"
        );
    }

    let started = futures_util::future::join_all(accepted.iter().map(|url| async move {
        let gw = Gateway::start(&[
            ("IMAGE_GATEWAY__CACHE__REDIS_URL", url.clone()),
            ("RUST_LOG", "debug".into()),
        ])
        .await;
        // A generation makes the gateway use Redis too.
        let res = reqwest::Client::new()
            .post(gw.url("/v1/images/generations"))
            .json(&json!({"prompt":"redis is down"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        for _ in 0..200 {
            if gw.logs().contains("Redis is unreachable") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        (url, gw)
    }))
    .await;
    for (url, gw) in started {
        let logs = gw.logs();
        assert!(
            logs.contains("shared second-level cache in Redis"),
            "{url}: {logs}"
        );
        assert!(logs.contains("Redis is unreachable"), "{url}: {logs}");
        assert!(!logs.contains("SECRET"), "the logs print {url}: {logs}");
    }
}

#[actix_web::test]
async fn upstream_failures_are_logged_with_fals_request_ids() {
    let fal = FakeFal::start("127.0.0.1:0", FakeConfig::default(), 1).unwrap();
    let mut env = fal_env(&fal);
    // Warnings only: the ids must reach the lines that matter at any level.
    env.push(("IMAGE_GATEWAY__LOG__LEVEL", "warn".into()));
    env.push(("IMAGE_GATEWAY__FAL__MAX_RETRIES", "0".into()));
    let gw = Gateway::start(&env).await;
    fal.inject(Fault {
        op: Op::Result,
        times: 1,
        action: FaultAction::Respond {
            status: 500,
            headers: vec![("x-fal-request-id".into(), "fal-support-id-4711".into())],
            body: r#"{"detail":"boom"}"#.into(),
        },
    });

    let res = reqwest::Client::new()
        .post(gw.url("/v1/images/generations"))
        .json(&json!({"prompt":"log my ids"}))
        .send()
        .await
        .unwrap();

    assert_eq!(res.status(), 502);
    // The job's queue request id, as fal's dashboard and support know it.
    let result_call = fal
        .calls()
        .into_iter()
        .find(|c| c.op == Op::Result)
        .expect("the result was fetched");
    let job_id = result_call.path.rsplit('/').next().unwrap().to_owned();
    let mut logs = String::new();
    for _ in 0..100 {
        logs = gw.logs();
        if logs.contains("fal call failed") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let line = logs
        .lines()
        .find(|l| l.contains("fal call failed"))
        .unwrap_or_else(|| panic!("no failure line: {}", short(&logs)));
    assert!(line.contains("fal-support-id-4711"), "{line}");
    assert!(line.contains(&job_id), "{line}");
}
