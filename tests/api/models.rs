//! Model lifecycle against the fake fal: chains of endpoints and when they
//! fall back, each endpoint's own mapping, who served (headers, metrics,
//! `/readyz`), lifecycle dates, and what `/v1/models` tells clients.

use fake_fal::{EndpointMode, Fault, FaultAction, Op};
use image_gateway::config::{BackendChoice, ModelEntry, ProfileEntry, Successors};
use serde_json::{Value, json};

use crate::helpers::*;

const IMAGEN_FAST: &str = "fal-ai/imagen4/preview/fast";
const NANO_BANANA_2: &str = "fal-ai/nano-banana-2";

/// The endpoints submitted to, in order, with their bodies.
fn submits(app: &TestApp) -> Vec<(String, Value)> {
    app.fal
        .calls()
        .into_iter()
        .filter(|c| c.op == Op::Submit)
        .map(|c| {
            (
                c.path.trim_start_matches('/').to_owned(),
                c.body.unwrap_or(Value::Null),
            )
        })
        .collect()
}

fn header<'a>(headers: &'a reqwest::header::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn behind() -> TestApp {
    spawn_app_with(|s| s.models.successors = Successors::Behind).await
}

#[actix_web::test]
async fn when_imagen_is_gone_the_next_endpoint_serves_with_its_own_mapping() {
    let app = behind().await;
    app.fal.set_endpoint(IMAGEN_FAST, EndpointMode::Gone410);

    let res = app
        .post_generation(json!({"prompt":"a harbour","size":"1536x1024","n":5}))
        .await;
    let (status, headers, body) = json(res).await;

    assert_eq!(status, 200, "{body}");
    let sent = submits(&app);
    // Imagen's jobs (4 + 1) were refused (the second may have been
    // cancelled before it was sent, or reach the fake late, its request
    // already on the wire when cancelled); then nano-banana-2's own 3:2
    // (not Imagen's 4:3) in jobs of its most per call.
    let imagen = sent.iter().filter(|(e, _)| e == IMAGEN_FAST).count();
    assert!((1..=2).contains(&imagen), "{sent:?}");
    assert_eq!(sent[0].0, IMAGEN_FAST, "{sent:?}");
    let next: Vec<&(String, Value)> = sent.iter().filter(|(e, _)| e != IMAGEN_FAST).collect();
    assert_eq!(
        next.iter().map(|(e, _)| e.as_str()).collect::<Vec<_>>(),
        [NANO_BANANA_2, NANO_BANANA_2]
    );
    let mut counts: Vec<i64> = next
        .iter()
        .map(|(_, b)| {
            assert_eq!(b["aspect_ratio"], "3:2", "{b}");
            assert_eq!(b["resolution"], "1K", "{b}");
            b["num_images"].as_i64().unwrap()
        })
        .collect();
    counts.sort();
    assert_eq!(counts, [1, 4]);
    assert_eq!(body["size"], "1264x848");
    assert_eq!(body["data"].as_array().unwrap().len(), 5);
    assert_eq!(
        header(&headers, "x-image-gateway-endpoint"),
        Some(NANO_BANANA_2)
    );
    assert_eq!(
        header(&headers, "x-image-gateway-model"),
        Some("imagen-4-fast")
    );
    // The model asked for is Imagen 4 fast, deprecated since fal dropped it.
    assert_eq!(header(&headers, "deprecation"), Some("@1784246400"));

    // Cached under the model asked for, keeping who made it.
    let res = app
        .post_generation(json!({"prompt":"a harbour","size":"1536x1024","n":5}))
        .await;
    assert_eq!(header(res.headers(), "x-cache"), Some("HIT"));
    assert_eq!(
        header(res.headers(), "x-image-gateway-endpoint"),
        Some(NANO_BANANA_2)
    );

    // Later requests skip the gone endpoint without probing it.
    let res = app.post_generation(json!({"prompt":"another"})).await;
    assert_eq!(res.status(), 200);
    let sent = submits(&app);
    assert_eq!(
        sent.iter().filter(|(e, _)| e == IMAGEN_FAST).count(),
        imagen
    );
    assert_eq!(sent.last().unwrap().0, NANO_BANANA_2);

    let (_, _, ready) = json(app.get("/readyz").await).await;
    assert_eq!(ready["endpoints_gone"][0]["endpoint"], IMAGEN_FAST);
    assert!(
        ready["endpoints_gone_hint"]
            .as_str()
            .unwrap()
            .contains("models.successors")
    );

    let m = app.metrics().await;
    let fallbacks = |reason| {
        series(
            &m,
            "image_gateway_fallbacks_total",
            &[
                ("model", "imagen-4-fast"),
                ("endpoint", IMAGEN_FAST),
                ("reason", reason),
            ],
        )
    };
    assert_eq!(fallbacks("gone"), Some(1.0));
    assert_eq!(fallbacks("marked_gone"), Some(1.0));
    assert_eq!(
        series(
            &m,
            "image_gateway_generations_total",
            &[("model", "imagen-4-fast"), ("endpoint", NANO_BANANA_2)]
        ),
        Some(3.0),
        "two generations and a cache hit"
    );
    assert_eq!(
        series(
            &m,
            "image_gateway_upstream_jobs_total",
            &[
                ("model", "imagen-4-fast"),
                ("endpoint", NANO_BANANA_2),
                ("outcome", "success")
            ]
        ),
        Some(3.0)
    );
}

#[actix_web::test]
async fn a_gone_endpoint_with_nothing_behind_it_is_a_502_naming_it() {
    let app = spawn_app().await;
    app.fal.set_endpoint(IMAGEN_FAST, EndpointMode::Gone404);

    let err = expect_error(app.post_generation(json!({"prompt":"x"})).await, 502).await;

    let message = err["message"].as_str().unwrap();
    assert!(message.contains(IMAGEN_FAST), "{message}");
    assert!(message.contains("models.successors"), "{message}");
    assert_eq!(err["code"], "upstream_error");
    assert_eq!(submits(&app).len(), 1);
    // Marked gone: the next request is answered without a probe.
    expect_error(app.post_generation(json!({"prompt":"y"})).await, 502).await;
    assert_eq!(submits(&app).len(), 1);
}

#[actix_web::test]
async fn failing_or_full_endpoints_fall_back_and_say_why() {
    for (mode, reason) in [
        (
            EndpointMode::Failing {
                status: 503,
                error_type: "runner_scheduling_failure".into(),
            },
            "failing",
        ),
        (EndpointMode::Capacity, "capacity"),
    ] {
        let app = spawn_app_with(|s| {
            s.models.successors = Successors::Behind;
            s.fal.max_retries = 1;
        })
        .await;
        app.fal.set_endpoint(IMAGEN_FAST, mode);

        let res = app.post_generation(json!({"prompt":"x"})).await;

        assert_eq!(res.status(), 200, "{reason}");
        assert_eq!(
            header(res.headers(), "x-image-gateway-endpoint"),
            Some(NANO_BANANA_2)
        );
        let m = app.metrics().await;
        assert_eq!(
            series(
                &m,
                "image_gateway_fallbacks_total",
                &[
                    ("model", "imagen-4-fast"),
                    ("endpoint", IMAGEN_FAST),
                    ("reason", reason)
                ]
            ),
            Some(1.0),
            "{reason}"
        );
        // Not gone: tried again by the next request.
        let (_, _, ready) = json(app.get("/readyz").await).await;
        assert_eq!(ready["endpoints_gone"], json!([]), "{reason}");
    }
}

#[actix_web::test]
async fn a_job_that_does_not_start_in_time_falls_back() {
    let app = spawn_app_with(|s| {
        s.models.successors = Successors::Behind;
        s.models.start_timeout_seconds = 2;
    })
    .await;
    app.fal
        .set_endpoint(IMAGEN_FAST, EndpointMode::Slow { queue_ms: 60_000 });

    let res = app.post_generation(json!({"prompt":"x"})).await;

    assert_eq!(res.status(), 200);
    assert_eq!(
        header(res.headers(), "x-image-gateway-endpoint"),
        Some(NANO_BANANA_2)
    );
    let first = app
        .fal
        .calls()
        .into_iter()
        .find(|c| c.op == Op::Submit)
        .unwrap();
    assert!(
        first
            .fal_headers
            .iter()
            .any(|(k, v)| k == "x-fal-request-timeout" && v.parse::<f64>() == Ok(2.0)),
        "{:?}",
        first.fal_headers
    );
    let m = app.metrics().await;
    assert_eq!(
        series(
            &m,
            "image_gateway_fallbacks_total",
            &[
                ("model", "imagen-4-fast"),
                ("endpoint", IMAGEN_FAST),
                ("reason", "start_timeout")
            ]
        ),
        Some(1.0)
    );
}

#[actix_web::test]
async fn the_clients_own_errors_never_fall_back() {
    let app = behind().await;
    app.fal.inject(Fault {
        op: Op::Submit,
        times: 0,
        action: FaultAction::Respond {
            status: 422,
            headers: vec![],
            body: r#"{"detail":[{"loc":["body","prompt"],"msg":"flagged","type":"content_policy_violation"}]}"#.into(),
        },
    });

    let err = expect_error(app.post_generation(json!({"prompt":"x"})).await, 400).await;

    assert_eq!(err["code"], "content_policy_violation");
    assert_eq!(
        submits(&app)
            .iter()
            .map(|(e, _)| e.as_str())
            .collect::<Vec<_>>(),
        [IMAGEN_FAST]
    );
    let m = app.metrics().await;
    assert_eq!(
        series(
            &m,
            "image_gateway_fallbacks_total",
            &[
                ("model", "imagen-4-fast"),
                ("endpoint", IMAGEN_FAST),
                ("reason", "failing")
            ]
        ),
        None
    );
}

#[actix_web::test]
async fn a_2_3_request_on_flux_gets_its_image_size_and_its_seed_back() {
    let app = spawn_app().await;

    let res = app
        .post_generation(json!({"prompt":"x","model":"flux-dev","size":"1024x1536","seed":99,"output_format":"webp"}))
        .await;
    let (status, headers, body) = json(res).await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(
        submits(&app),
        [(
            "fal-ai/flux/dev".to_owned(),
            json!({"prompt":"x","image_size":{"width":1024,"height":1536},"num_images":1,
                   "output_format":"png","sync_mode":false,"seed":99})
        )]
    );
    assert_eq!(body["size"], "1024x1536");
    // FLUX has no WebP: PNG comes back, and the answer says so.
    assert_eq!(body["output_format"], "png");
    assert_eq!(
        header(&headers, "x-image-gateway-ignored-fields"),
        Some("output_format")
    );
    assert_eq!(header(&headers, "x-image-gateway-seed"), Some("99"));
    assert_eq!(
        header(&headers, "x-image-gateway-endpoint"),
        Some("fal-ai/flux/dev")
    );
    assert_eq!(header(&headers, "deprecation"), None);
}

#[actix_web::test]
async fn imagen_standard_goes_to_2k_and_honours_moderation_low() {
    let app = spawn_app().await;

    let res = app
        .post_generation(json!({"prompt":"x","model":"imagen-4","size":"1792x1024","moderation":"low","response_format":"b64_json"}))
        .await;
    let (status, headers, body) = json(res).await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(
        submits(&app)[0].1,
        json!({"prompt":"x","aspect_ratio":"16:9","resolution":"2K","num_images":1,
               "output_format":"png","sync_mode":true,"safety_tolerance":"5"})
    );
    assert_eq!(body["size"], "2816x1536");
    let (_, w, h) = decode_image(body["data"][0]["b64_json"].as_str().unwrap());
    assert_eq!((w, h), (2816, 1536));
    assert_eq!(header(&headers, "x-image-gateway-ignored-fields"), None);
    assert_eq!(header(&headers, "x-image-gateway-seed"), None);
}

#[actix_web::test]
async fn an_endpoint_past_its_sunset_is_skipped_and_dates_are_announced() {
    let app = spawn_app_with(|s| {
        s.models.catalog = vec![ModelEntry {
            id: "pictures".into(),
            endpoints: vec![IMAGEN_FAST.into(), NANO_BANANA_2.into()],
            deprecated: Some("2026-01-01".into()),
            sunset: Some("2099-12-31".into()),
            ..ModelEntry::default()
        }];
        s.models.default = "pictures".into();
        s.models.profiles = vec![ProfileEntry {
            endpoint: IMAGEN_FAST.into(),
            sunset: Some("2026-02-01".into()),
            ..ProfileEntry::default()
        }];
    })
    .await;

    let res = app.post_generation(json!({"prompt":"x"})).await;

    assert_eq!(res.status(), 200);
    assert_eq!(submits(&app).len(), 1);
    assert_eq!(submits(&app)[0].0, NANO_BANANA_2);
    assert_eq!(header(res.headers(), "deprecation"), Some("@1767225600"));
    assert_eq!(
        header(res.headers(), "sunset"),
        Some("Thu, 31 Dec 2099 00:00:00 GMT")
    );
    let (_, _, model) = json(app.get("/v1/models/pictures").await).await;
    assert_eq!(model["chain"][0]["retired"], true);
    assert_eq!(model["deprecated"], "2026-01-01");
}

#[actix_web::test]
async fn models_show_their_chains_capabilities_prices_and_dates() {
    let app = behind().await;

    let (status, _, model) = json(app.get("/v1/models/dall-e-3").await).await;

    assert_eq!(status, 200);
    assert_eq!(model["id"], "dall-e-3");
    assert_eq!(model["alias_of"], "imagen-4-fast");
    assert_eq!(model["endpoints"], json!([IMAGEN_FAST, NANO_BANANA_2]));
    assert_eq!(model["deprecated"], "2026-07-17");
    let caps = &model["capabilities"];
    assert_eq!(caps["max_n"], 10);
    assert_eq!(caps["max_images_per_call"], 4);
    assert_eq!(caps["output_formats"], json!(["png", "jpeg", "webp"]));
    assert_eq!(caps["seed"], "input");
    assert!(
        caps["sizes"]
            .as_array()
            .unwrap()
            .contains(&json!("1408x768"))
    );
    let nb2 = &model["chain"][1];
    assert_eq!(nb2["endpoint"], NANO_BANANA_2);
    assert_eq!(nb2["price"]["unit"], "image");
    assert_eq!(nb2["price"]["usd"], "0.08");
    assert_eq!(nb2["price"]["checked"], "2026-11-30");
    assert!(
        nb2["capabilities"]["sizes"]
            .as_array()
            .unwrap()
            .contains(&json!("1264x848"))
    );
    assert_eq!(
        nb2["capabilities"]["resolutions"],
        json!(["0.5K", "1K", "2K", "4K"])
    );
    assert_eq!(nb2["gone"], false);

    let (_, _, flux) = json(app.get("/v1/models/flux-schnell").await).await;
    assert_eq!(flux["capabilities"]["custom_size"]["max_side"], 2048);
    assert_eq!(flux["capabilities"]["seed"], "input_output");
    assert_eq!(flux["chain"][0]["price"]["unit"], "megapixel");

    let (_, _, list) = json(app.get("/v1/models").await).await;
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    for id in [
        "imagen-4-fast",
        "nano-banana-2",
        "nano-banana-pro",
        "flux-schnell",
        "flux-dev",
        "flux-2-pro",
        "seedream-4",
        "gpt-image-1",
    ] {
        assert!(ids.contains(&id), "{id}");
    }
}

#[actix_web::test]
async fn the_offline_backend_delivers_the_sizes_the_endpoint_would() {
    let app = spawn_app_with(|s| s.backend = BackendChoice::Local).await;

    for (model, size, delivered, format) in [
        (
            "flux-schnell",
            "1024x1536",
            (1024, 1536),
            image::ImageFormat::Png,
        ),
        (
            "nano-banana-2",
            "1536x1024",
            (1264, 848),
            image::ImageFormat::Png,
        ),
        (
            "imagen-4-fast",
            "1536x1024",
            (1280, 896),
            image::ImageFormat::Png,
        ),
    ] {
        let (status, headers, body) = json(
            app.post_generation(
                json!({"prompt":"x","model":model,"size":size,"response_format":"b64_json"}),
            )
            .await,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let (got_format, w, h) = decode_image(body["data"][0]["b64_json"].as_str().unwrap());
        assert_eq!(((w, h), got_format), (delivered, format), "{model}");
        assert_eq!(body["size"], format!("{}x{}", delivered.0, delivered.1));
        assert!(header(&headers, "x-image-gateway-endpoint").is_some());
    }
    assert!(app.fal.calls().is_empty());
}

#[actix_web::test]
async fn a_stream_names_the_endpoint_that_served_in_its_completed_event() {
    let app = behind().await;
    app.fal.set_endpoint(IMAGEN_FAST, EndpointMode::Gone410);

    let res = app
        .post_generation(json!({"prompt":"x","stream":true,"size":"1536x1024"}))
        .await;

    assert_eq!(res.status(), 200);
    // Sent before the images exist: the endpoint the chain tries first.
    assert_eq!(
        header(res.headers(), "x-image-gateway-endpoint"),
        Some(IMAGEN_FAST)
    );
    let text = res.text().await.unwrap();
    let data = text
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .expect("a completed event");
    let event: Value = serde_json::from_str(data).unwrap();
    assert_eq!(event["type"], "image_generation.completed");
    assert_eq!(event["endpoint"], NANO_BANANA_2);
    assert_eq!(event["size"], "1264x848");
}
