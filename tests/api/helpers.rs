//! `spawn_app()`: the real application on port 0, pointed at a fake fal
//! server also on port 0, with typed helpers for the calls tests make.

use std::sync::Arc;

use actix_web::dev::ServerHandle;
use fake_fal::{FakeConfig, FakeFal};
use image_gateway::app::Application;
use image_gateway::config::{BackendChoice, DatabaseUrl, Secret, Settings};
use image_gateway::service::GenerationService;
use serde_json::Value;

pub const FAL_KEY: &str = "fal-test-key-0123456789";

#[allow(dead_code)] // not every module uses every field
pub struct TestApp {
    pub address: String,
    pub admin_address: Option<String>,
    pub fal: FakeFal,
    pub client: reqwest::Client,
    pub service: Arc<GenerationService>,
    pub handle: ServerHandle,
}

/// Settings for a gateway in front of `fal`, tuned for fast tests.
pub fn test_settings(fal: &FakeFal) -> Settings {
    let mut s = Settings::default();
    s.server.listen = "127.0.0.1:0".into();
    s.server.workers = 1;
    s.server.request_timeout_seconds = 20;
    s.backend = BackendChoice::Fal;
    s.fal.key = Some(Secret::new(FAL_KEY));
    s.fal.queue_url = fal.queue_url();
    s.fal.run_url = fal.run_url();
    s.fal.poll_initial_delay_ms = 0;
    s.fal.poll_max_delay_ms = 20;
    s.fal.retry_base_delay_ms = 5;
    s.fal.retry_max_delay_ms = 50;
    // The fake serves its image files on loopback.
    s.fal.download_hosts = vec!["127.0.0.1".into()];
    s.fal.download_private_networks = true;
    // Each gateway its own database, gone with it (tests that need a file
    // or PostgreSQL set their own).
    s.database.url = DatabaseUrl::new("sqlite::memory:");
    s
}

/// The gateway with default test settings in front of a fresh fake fal.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Like [`spawn_app`], with settings adjusted by `configure`.
pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_app_with_fake(FakeConfig::default(), configure).await
}

pub async fn spawn_app_with_fake(
    fake: FakeConfig,
    configure: impl FnOnce(&mut Settings),
) -> TestApp {
    image_gateway::install_crypto_provider();
    let fal = FakeFal::start("127.0.0.1:0", fake, 1).expect("fake fal starts");
    spawn_replica(&fal, configure).await
}

/// Another gateway in front of an existing fake fal (replicas of one fleet).
pub async fn spawn_replica(fal: &FakeFal, configure: impl FnOnce(&mut Settings)) -> TestApp {
    image_gateway::install_crypto_provider();
    let fal = fal.clone();
    let mut settings = test_settings(&fal);
    configure(&mut settings);
    settings.validate().expect("test settings are valid");
    let app = Application::build(settings).expect("app builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let admin_address = app.admin_port().map(|p| format!("http://127.0.0.1:{p}"));
    let service = app.service();
    let handle = app.handle();
    actix_web::rt::spawn(app.run_until_stopped());
    TestApp {
        address,
        admin_address,
        fal,
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client builds"),
        service,
        handle,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// A generation sent in the background; the handle yields its answer.
    pub fn spawn_generation(&self, body: Value) -> tokio::task::JoinHandle<reqwest::Response> {
        let (client, url) = (self.client.clone(), self.url("/v1/images/generations"));
        tokio::spawn(async move { client.post(url).json(&body).send().await.unwrap() })
    }

    pub async fn post_generation(&self, body: Value) -> reqwest::Response {
        self.post_generation_with(body, &[]).await
    }

    pub async fn post_generation_with(
        &self,
        body: Value,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut req = self
            .client
            .post(self.url("/v1/images/generations"))
            .header("content-type", "application/json")
            .body(body.to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.expect("request is sent")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request is sent")
    }

    /// The `/metrics` text (from the admin listener when there is one).
    pub async fn metrics(&self) -> String {
        let base = self.admin_address.as_deref().unwrap_or(&self.address);
        self.client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .expect("metrics answer")
            .text()
            .await
            .expect("metrics text")
    }
}

/// Status, headers and JSON body of a response.
pub async fn json(res: reqwest::Response) -> (u16, reqwest::header::HeaderMap, Value) {
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let bytes = res.bytes().await.expect("body");
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}",
            short(&String::from_utf8_lossy(&bytes))
        )
    });
    (status, headers, body)
}

/// Assert an OpenAI-shaped error and return its `error` object.
pub async fn expect_error(res: reqwest::Response, status: u16) -> Value {
    let (got, headers, body) = json(res).await;
    assert_eq!(
        got,
        status,
        "unexpected status; body: {}",
        short(&body.to_string())
    );
    assert!(
        headers.contains_key("x-request-id"),
        "errors carry x-request-id"
    );
    let err = body["error"].clone();
    assert!(
        err["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(err["type"].is_string(), "{body}");
    assert!(
        err.get("param").is_some() && err.get("code").is_some(),
        "{body}"
    );
    err
}

/// The value of one series in a Prometheus text scrape, e.g.
/// `series(&text, "image_gateway_cache_lookups_total", &[("result","hit")])`.
pub fn series(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            let (metric, rest) = match key.split_once('{') {
                Some((m, r)) => (m, r.trim_end_matches('}')),
                None => (key, ""),
            };
            if metric != name {
                return None;
            }
            let present: Vec<(&str, &str)> = rest
                .split(',')
                .filter(|p| !p.is_empty())
                .filter_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    Some((k, v.trim_matches('"')))
                })
                .collect();
            let all = labels.iter().all(|l| present.contains(l)) && present.len() == labels.len();
            all.then(|| value.parse().ok()).flatten()
        })
}

/// Decode a base64 image and return (format, width, height).
pub fn decode_image(b64: &str) -> (image::ImageFormat, u32, u32) {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("valid base64");
    let format = image::guess_format(&bytes).expect("a known image format");
    let img = image::load_from_memory(&bytes).expect("decodable image");
    (format, img.width(), img.height())
}

/// A body cut short for assertion messages (images are megabytes).
pub fn short(text: &str) -> String {
    if text.len() <= 400 {
        text.to_owned()
    } else {
        format!(
            "{}... ({} bytes)",
            &text[..text.floor_char_boundary(400)],
            text.len()
        )
    }
}

/// Wait (up to 4 s) until `check` holds: for work the gateway finishes in
/// the background after answering, such as fal cancellations.
pub async fn eventually(what: &str, check: impl Fn() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("never happened: {what}");
}
