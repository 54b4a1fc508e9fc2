//! Identical requests generated once: the cache, single-flight, its headers
//! and controls.

use std::time::Duration;

use fake_fal::{FakeConfig, Fault, FaultAction, Op};
use futures_util::future::join_all;
use image_gateway::config::{CacheMode, CacheScope, Secret};
use serde_json::json;

use crate::helpers::*;

fn slow(queue_ms: u64) -> FakeConfig {
    FakeConfig {
        queue_ms,
        ..FakeConfig::default()
    }
}

#[actix_web::test]
async fn two_identical_calls_make_one_submit_and_the_second_is_a_byte_identical_hit() {
    let app = spawn_app().await;
    let body = json!({"prompt":"a lighthouse at dusk","size":"1792x1024","n":2,"response_format":"b64_json"});

    let first = app.post_generation(body.clone()).await;
    let first_cache = first.headers()["x-cache"].clone();
    let first_bytes = first.bytes().await.unwrap();
    let second = app.post_generation(body).await;
    let headers = second.headers().clone();
    let second_bytes = second.bytes().await.unwrap();

    assert_eq!(first_cache, "MISS");
    assert_eq!(headers["x-cache"], "HIT");
    assert!(headers["age"].to_str().unwrap().parse::<u64>().is_ok());
    assert_eq!(first_bytes, second_bytes, "byte-identical answer");
    assert_eq!(app.fal.count(Op::Submit), 1);
}

#[actix_web::test]
async fn fifty_identical_concurrent_calls_make_one_submit() {
    let app = spawn_app_with_fake(slow(300), |_| {}).await;
    let body = json!({"prompt":"fifty at once","response_format":"b64_json"});

    let responses = join_all((0..50).map(|_| app.post_generation(body.clone()))).await;

    let mut labels = Vec::new();
    let mut bodies = Vec::new();
    for res in responses {
        assert_eq!(res.status(), 200);
        labels.push(res.headers()["x-cache"].to_str().unwrap().to_owned());
        bodies.push(res.bytes().await.unwrap());
    }
    assert_eq!(app.fal.count(Op::Submit), 1);
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
    assert!(
        labels.iter().filter(|l| *l == "COALESCED").count() >= 40,
        "{labels:?}"
    );
    assert!(bodies.iter().all(|b| *b == bodies[0]));
}

#[actix_web::test]
async fn requests_with_different_upstream_bodies_never_share_and_aliases_do() {
    let app = spawn_app().await;
    for body in [
        json!({"prompt":"cat"}),
        json!({"prompt":"cat","model":"dall-e-3"}),
        json!({"prompt":"cat","model":"imagen-4-fast","size":"1024x1024","quality":"hd"}),
        json!({"prompt":"cat","size":"1792x1024"}),
        json!({"prompt":"cat","output_format":"webp"}),
        json!({"prompt":"cat","response_format":"b64_json"}),
        json!({"prompt":"cat","n":2}),
        json!({"prompt":"cat","model":"imagen-4"}),
        json!({"prompt":"cat","seed":3}),
        json!({"prompt":"Cat"}),
    ] {
        assert_eq!(app.post_generation(body).await.status(), 200);
    }
    // The first three share one entry; the other seven each differ.
    assert_eq!(app.fal.count(Op::Submit), 8);
}

#[actix_web::test]
async fn no_cache_forces_a_fresh_generation_that_refreshes_the_entry() {
    let app = spawn_app().await;
    let body = json!({"prompt":"fresh"});

    let a = app.post_generation(body.clone()).await;
    let b = app
        .post_generation_with(body.clone(), &[("cache-control", "no-cache")])
        .await;
    let c = app.post_generation(body).await;

    assert_eq!(a.headers()["x-cache"], "MISS");
    assert_eq!(b.headers()["x-cache"], "MISS");
    assert_eq!(c.headers()["x-cache"], "HIT");
    assert_eq!(app.fal.count(Op::Submit), 2);
    let metrics = app.metrics().await;
    assert_eq!(
        series(
            &metrics,
            "image_gateway_cache_lookups_total",
            &[("result", "bypass")]
        ),
        Some(1.0)
    );
}

#[actix_web::test]
async fn no_store_keeps_the_answer_out_of_the_cache() {
    let app = spawn_app().await;
    let body = json!({"prompt":"private"});

    let a = app
        .post_generation_with(body.clone(), &[("cache-control", "no-store")])
        .await;
    let b = app.post_generation(body.clone()).await;
    let c = app.post_generation(body).await;

    assert_eq!(a.headers()["x-cache"], "MISS");
    assert_eq!(b.headers()["x-cache"], "MISS");
    assert_eq!(c.headers()["x-cache"], "HIT");
    assert_eq!(app.fal.count(Op::Submit), 2);
}

#[actix_web::test]
async fn errors_are_never_cached_and_every_waiter_gets_the_error() {
    let app = spawn_app_with_fake(slow(300), |_| {}).await;
    app.fal.inject(Fault {
        op: Op::Result,
        times: 1,
        action: FaultAction::Respond {
            status: 500,
            headers: vec![("x-fal-request-id".into(), "r".into())],
            body: "{}".into(),
        },
    });
    let body = json!({"prompt":"doomed"});

    let responses = join_all((0..5).map(|_| app.post_generation(body.clone()))).await;

    for res in responses {
        let err = expect_error(res, 502).await;
        assert_eq!(err["code"], "upstream_error");
    }
    assert_eq!(app.fal.count(Op::Submit), 1, "the five coalesced");
    let again = app.post_generation(body).await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["x-cache"], "MISS");
    assert_eq!(app.fal.count(Op::Submit), 2);
}

#[actix_web::test]
async fn more_than_four_images_are_cached_as_one_answer() {
    let app = spawn_app().await;
    let body = json!({"prompt":"ten","n":10,"response_format":"b64_json"});

    let a = app.post_generation(body.clone()).await;
    assert_eq!(a.status(), 200);
    let (_, headers, answer) = json(app.post_generation(body).await).await;

    assert_eq!(app.fal.count(Op::Submit), 3, "4 + 4 + 2, once");
    assert_eq!(headers["x-cache"], "HIT");
    assert_eq!(answer["data"].as_array().unwrap().len(), 10);
}

#[actix_web::test]
async fn per_key_scope_never_shares_images_between_client_keys() {
    let app = spawn_app_with(|s| {
        s.auth.api_keys = vec![Secret::new("sk-tenant-a"), Secret::new("sk-tenant-b")];
        s.cache.scope = CacheScope::PerKey;
    })
    .await;
    let body = json!({"prompt":"tenant"});
    let as_a = [("authorization", "Bearer sk-tenant-a")];
    let as_b = [("authorization", "Bearer sk-tenant-b")];

    let a1 = app.post_generation_with(body.clone(), &as_a).await;
    let b1 = app.post_generation_with(body.clone(), &as_b).await;
    let a2 = app.post_generation_with(body, &as_a).await;

    assert_eq!(a1.headers()["x-cache"], "MISS");
    assert_eq!(b1.headers()["x-cache"], "MISS");
    assert_eq!(a2.headers()["x-cache"], "HIT");
    assert_eq!(app.fal.count(Op::Submit), 2);
}

#[actix_web::test]
async fn with_client_keys_the_default_scope_keeps_keys_apart() {
    let app = spawn_app_with(|s| {
        s.auth.api_keys = vec![Secret::new("sk-tenant-a"), Secret::new("sk-tenant-b")];
    })
    .await;
    let body = json!({"prompt":"did anyone ask this before?"});
    let a = app
        .post_generation_with(body.clone(), &[("authorization", "Bearer sk-tenant-a")])
        .await;
    assert_eq!(a.headers()["x-cache"], "MISS");
    let b = app
        .post_generation_with(body, &[("authorization", "Bearer sk-tenant-b")])
        .await;
    assert_eq!(
        b.headers()["x-cache"],
        "MISS",
        "key b cannot learn that key a asked for this prompt"
    );
    assert_eq!(app.fal.count(Op::Submit), 2);
}

#[actix_web::test]
async fn the_global_scope_shares_between_keys() {
    let app = spawn_app_with(|s| {
        s.auth.api_keys = vec![Secret::new("sk-tenant-a"), Secret::new("sk-tenant-b")];
        s.cache.scope = CacheScope::Global;
    })
    .await;
    let body = json!({"prompt":"shared"});
    app.post_generation_with(body.clone(), &[("authorization", "Bearer sk-tenant-a")])
        .await;
    let b = app
        .post_generation_with(body, &[("authorization", "Bearer sk-tenant-b")])
        .await;
    assert_eq!(b.headers()["x-cache"], "HIT");
    assert_eq!(app.fal.count(Op::Submit), 1);
}

#[actix_web::test]
async fn with_cache_mode_off_every_request_reaches_fal() {
    let app = spawn_app_with(|s| s.cache.mode = CacheMode::Off).await;
    for body in [
        json!({"prompt":"uncached"}),
        json!({"prompt":"uncached", "seed": 7}),
    ] {
        for _ in 0..2 {
            let res = app.post_generation(body.clone()).await;
            assert_eq!(res.headers()["x-cache"], "MISS");
        }
    }
    assert_eq!(app.fal.count(Op::Submit), 4);
    let ready: serde_json::Value = app.get("/readyz").await.json().await.unwrap();
    assert_eq!(ready["cache_mode"], "off");
    assert_eq!(ready["cache"], false);
}

/// `seeded`: a request without a seed is a fresh sample every time, as with
/// OpenAI (clients that split `n` into identical calls get distinct images);
/// one with a seed asks for a reproducible image, which is cached and
/// coalesced as before.
#[actix_web::test]
async fn with_cache_mode_seeded_only_requests_with_a_seed_are_cached_and_coalesced() {
    let app = spawn_app_with_fake(slow(300), |s| s.cache.mode = CacheMode::Seeded).await;
    let unseeded = json!({"prompt":"a sample each time"});
    let seeded = json!({"prompt":"a sample each time", "seed": 42});

    let parallel = join_all((0..3).map(|_| app.post_generation(unseeded.clone()))).await;
    for res in &parallel {
        assert_eq!(res.headers()["x-cache"], "MISS");
    }
    assert_eq!(
        app.fal.count(Op::Submit),
        3,
        "identical unseeded calls are not coalesced"
    );
    let again = app.post_generation(unseeded.clone()).await;
    assert_eq!(again.headers()["x-cache"], "MISS");
    assert_eq!(app.fal.count(Op::Submit), 4, "nor answered from the cache");

    let statuses: Vec<String> = join_all((0..3).map(|_| app.post_generation(seeded.clone())))
        .await
        .iter()
        .map(|r| r.headers()["x-cache"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| *s == "MISS").count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| *s == "COALESCED").count(),
        2,
        "{statuses:?}"
    );
    let hit = app.post_generation(seeded).await;
    assert_eq!(hit.headers()["x-cache"], "HIT");
    assert_eq!(app.fal.count(Op::Submit), 5);

    let ready: serde_json::Value = app.get("/readyz").await.json().await.unwrap();
    assert_eq!(ready["cache_mode"], "seeded");
    assert_eq!(ready["cache"], true);
}

#[actix_web::test]
async fn a_waiter_leaving_does_not_cancel_a_job_others_still_wait_for() {
    let app = spawn_app_with_fake(slow(800), |_| {}).await;
    let body = json!({"prompt":"shared wait"});
    let impatient = app
        .client
        .post(app.url("/v1/images/generations"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .timeout(Duration::from_millis(200))
        .send();
    let patient = app.post_generation(body.clone());

    let (gone, done) = futures_util::join!(impatient, patient);

    assert!(gone.is_err(), "the impatient client timed out");
    assert_eq!(done.status(), 200);
    assert_eq!(app.fal.count(Op::Submit), 1);
    assert_eq!(app.fal.cancelled_jobs(), 0);
    let metrics = app.metrics().await;
    assert_eq!(
        series(&metrics, "image_gateway_client_disconnects_total", &[]),
        Some(1.0)
    );
}

#[actix_web::test]
async fn the_last_waiter_leaving_cancels_the_fal_job() {
    let app = spawn_app_with_fake(slow(5_000), |_| {}).await;

    let gone = app
        .client
        .post(app.url("/v1/images/generations"))
        .header("content-type", "application/json")
        .body(json!({"prompt":"abandoned"}).to_string())
        .timeout(Duration::from_millis(300))
        .send()
        .await;

    assert!(gone.is_err());
    eventually("the fal job is cancelled", || app.fal.cancelled_jobs() == 1).await;
    assert!(app.service.in_flight() == 0);
    let metrics = app.metrics().await;
    assert_eq!(
        series(&metrics, "image_gateway_client_disconnects_total", &[]),
        Some(1.0)
    );
    assert_eq!(
        series(
            &metrics,
            "image_gateway_upstream_cancellations_total",
            &[("reason", "cancelled")]
        ),
        Some(1.0)
    );
}
