//! `/metrics` after known traffic: exact series values, bounded labels, the
//! admin listener.

use fake_fal::Op;
use image_gateway::config::Secret;
use serde_json::json;

use crate::helpers::*;

#[actix_web::test]
async fn a_scrape_after_known_traffic_shows_exact_series() {
    let app = spawn_app().await;
    // One miss, one hit, one bypass (no-cache), one 400, one 404.
    let body = json!({"prompt":"counted","size":"1792x1024","output_format":"jpeg"});
    assert_eq!(app.post_generation(body.clone()).await.status(), 200);
    assert_eq!(app.post_generation(body.clone()).await.status(), 200);
    assert_eq!(
        app.post_generation_with(body, &[("cache-control", "no-cache")])
            .await
            .status(),
        200
    );
    assert_eq!(
        app.post_generation(json!({"prompt":"x","n":0}))
            .await
            .status(),
        400
    );
    assert_eq!(app.get("/v1/models/nope").await.status(), 404);

    let m = app.metrics().await;

    let route = [("route", "/v1/images/generations"), ("method", "POST")];
    let with_status = |s| [route[0], route[1], ("status", s)];
    assert_eq!(
        series(&m, "image_gateway_http_requests_total", &with_status("200")),
        Some(3.0)
    );
    assert_eq!(
        series(&m, "image_gateway_http_requests_total", &with_status("400")),
        Some(1.0)
    );
    assert_eq!(
        series(
            &m,
            "image_gateway_http_requests_total",
            &[
                ("route", "/v1/models/{model}"),
                ("method", "GET"),
                ("status", "404")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        series(
            &m,
            "image_gateway_http_request_duration_seconds_count",
            &route
        ),
        Some(4.0)
    );
    assert_eq!(
        series(
            &m,
            "image_gateway_cache_lookups_total",
            &[("result", "hit")]
        ),
        Some(1.0)
    );
    assert_eq!(
        series(
            &m,
            "image_gateway_cache_lookups_total",
            &[("result", "miss")]
        ),
        Some(1.0)
    );
    assert_eq!(
        series(
            &m,
            "image_gateway_cache_lookups_total",
            &[("result", "bypass")]
        ),
        Some(1.0)
    );
    assert_eq!(
        series(
            &m,
            "image_gateway_cache_lookups_total",
            &[("result", "coalesced")]
        ),
        Some(0.0)
    );
    assert_eq!(series(&m, "image_gateway_cache_entries", &[]), Some(1.0));
    assert!(series(&m, "image_gateway_cache_size_bytes", &[]).unwrap() > 0.0);
    assert_eq!(
        series(&m, "image_gateway_cache_capacity_bytes", &[]),
        Some(268_435_456.0)
    );
    assert_eq!(
        series(
            &m,
            "image_gateway_upstream_requests_total",
            &[("operation", "submit"), ("outcome", "success")]
        ),
        Some(2.0)
    );
    assert_eq!(
        series(
            &m,
            "image_gateway_upstream_requests_total",
            &[("operation", "result"), ("outcome", "success")]
        ),
        Some(2.0)
    );
    assert_eq!(
        series(
            &m,
            "image_gateway_upstream_jobs_total",
            &[
                ("model", "imagen-4-fast"),
                ("endpoint", "fal-ai/imagen4/preview/fast"),
                ("outcome", "success")
            ]
        ),
        Some(2.0)
    );
    assert_eq!(
        series(
            &m,
            "image_gateway_images_generated_total",
            &[
                ("model", "imagen-4-fast"),
                ("aspect_ratio", "16:9"),
                ("output_format", "jpeg")
            ]
        ),
        Some(2.0)
    );
    assert_eq!(
        series(
            &m,
            "image_gateway_upstream_job_duration_seconds_count",
            &[("model", "imagen-4-fast"), ("phase", "total")]
        ),
        Some(2.0)
    );
    assert_eq!(
        series(&m, "image_gateway_upstream_jobs_in_flight", &[]),
        Some(0.0)
    );
    // The scrape itself is the one request in flight.
    assert_eq!(
        series(&m, "image_gateway_http_requests_in_flight", &[]),
        Some(1.0)
    );
    assert_eq!(
        series(
            &m,
            "image_gateway_build_info",
            &[("version", env!("CARGO_PKG_VERSION")), ("backend", "fal")]
        ),
        Some(1.0)
    );
    for process in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_cpu_seconds_total",
    ] {
        assert!(series(&m, process, &[]).is_some(), "{process} missing");
    }
    assert_eq!(app.fal.count(Op::Submit), 2);
}

#[actix_web::test]
async fn labels_never_carry_prompts_keys_raw_paths_or_request_ids() {
    let app = spawn_app_with(|s| {
        s.auth.api_keys = vec![Secret::new("sk-label-secret")];
        s.metrics.public = true;
    })
    .await;
    let auth = [
        ("authorization", "Bearer sk-label-secret"),
        ("x-request-id", "trace-label-id"),
    ];
    app.post_generation_with(json!({"prompt":"PROMPT-SHOULD-NOT-APPEAR"}), &auth)
        .await;
    app.post_generation_with(
        json!({"prompt":"x"}),
        &[("authorization", "Bearer sk-wrong-key")],
    )
    .await;
    app.client
        .get(app.url("/v1/images/files/abcdef0123456789.png"))
        .send()
        .await
        .unwrap();
    app.client
        .get(app.url("/some/random/path-123"))
        .header("authorization", "Bearer sk-label-secret")
        .send()
        .await
        .unwrap();

    let m = app.metrics().await;

    for leaked in [
        "PROMPT-SHOULD-NOT-APPEAR",
        "sk-label-secret",
        "sk-wrong-key",
        "trace-label-id",
        "abcdef0123456789",
        "path-123",
        FAL_KEY,
    ] {
        assert!(!m.contains(leaked), "{leaked} leaked into /metrics");
    }
    assert!(m.contains(r#"route="/v1/images/files/{name}""#));
    assert!(m.contains(r#"route="unmatched""#));
}

#[actix_web::test]
async fn metrics_can_live_on_a_separate_admin_listener() {
    let app = spawn_app_with(|s| s.metrics.listen = "127.0.0.1:0".into()).await;
    let admin = app.admin_address.clone().expect("an admin listener");

    let on_api = app.get("/metrics").await;
    let on_admin = app
        .client
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap();
    let probe = app
        .client
        .get(format!("{admin}/healthz"))
        .send()
        .await
        .unwrap();

    assert_eq!(on_api.status(), 404);
    assert_eq!(on_admin.status(), 200);
    assert_eq!(
        on_admin.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    assert!(
        on_admin
            .text()
            .await
            .unwrap()
            .contains("image_gateway_build_info")
    );
    assert_eq!(probe.status(), 200);
}
