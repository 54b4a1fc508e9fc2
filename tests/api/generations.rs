//! `POST /v1/images/generations` against the fake fal: the exact upstream
//! requests and the exact OpenAI answers.

use fake_fal::{FakeConfig, Fault, FaultAction, Op};
use image_gateway::config::{BackendChoice, CacheMode, FalMode};
use serde_json::json;

use crate::helpers::*;

#[actix_web::test]
async fn a_b64_request_sends_imagens_exact_input_and_answers_openai_json() {
    let app = spawn_app().await;

    let res = app
        .post_generation(
            json!({"model":"imagen-4-fast","prompt":"a lighthouse at dusk",
                                "size":"1792x1024","n":2,"response_format":"b64_json"}),
        )
        .await;
    let (status, headers, body) = json(res).await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(
        app.fal.submitted_bodies(),
        [
            json!({"prompt":"a lighthouse at dusk","aspect_ratio":"16:9","num_images":2,
                "output_format":"png","sync_mode":true})
        ]
    );
    let calls = app.fal.calls();
    assert_eq!(calls[0].path, "/fal-ai/imagen4/preview/fast");
    for call in &calls {
        assert_eq!(
            call.authorization.as_deref(),
            Some(&*format!("Key {FAL_KEY}")),
            "{call:?}"
        );
    }
    assert!(calls.iter().any(|c| c.op == Op::Stream
        && c.path.starts_with("/fal-ai/imagen4/requests/")
        && c.path.ends_with("/status/stream")));
    assert!(
        calls
            .iter()
            .any(|c| c.op == Op::Result && c.path.starts_with("/fal-ai/imagen4/requests/"))
    );
    assert!(body["created"].as_i64().is_some_and(|c| c > 1_700_000_000));
    assert_eq!(body["output_format"], "png");
    assert_eq!(body["size"], "1408x768");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    for item in data {
        assert!(item.get("url").is_none());
        let (format, w, h) = decode_image(item["b64_json"].as_str().unwrap());
        assert_eq!((format, w, h), (image::ImageFormat::Png, 1408, 768));
    }
    assert_eq!(headers["x-cache"], "MISS");
    assert_eq!(headers["x-image-gateway-backend"], "fal");
    assert!(
        headers["x-request-id"]
            .to_str()
            .unwrap()
            .starts_with("req_")
    );
    assert!(headers.contains_key("openai-processing-ms"));
}

#[actix_web::test]
async fn a_url_request_passes_fals_urls_through_without_sync_mode() {
    let app = spawn_app().await;

    let (status, _, body) = json(
        app.post_generation(json!({"prompt":"x","size":"1024x1536"}))
            .await,
    )
    .await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(
        app.fal.submitted_bodies(),
        [
            json!({"prompt":"x","aspect_ratio":"3:4","num_images":1,"output_format":"png","sync_mode":false})
        ]
    );
    let url = body["data"][0]["url"].as_str().unwrap();
    assert_eq!(
        url,
        format!("{}/files/896x1280-png-1-0-0.png", app.fal.queue_url())
    );
    assert_eq!(body["size"], "896x1280");
}

#[actix_web::test]
async fn six_images_become_two_parallel_jobs_of_four_and_two() {
    let app = spawn_app().await;

    let (status, _, body) = json(
        app.post_generation(
            json!({"prompt":"p","n":6,"response_format":"b64_json","output_format":"jpeg"}),
        )
        .await,
    )
    .await;

    assert_eq!(status, 200, "{body}");
    let mut counts: Vec<u64> = app
        .fal
        .submitted_bodies()
        .iter()
        .map(|b| b["num_images"].as_u64().unwrap())
        .collect();
    counts.sort();
    assert_eq!(counts, [2, 4]);
    assert_eq!(body["data"].as_array().unwrap().len(), 6);
    assert_eq!(body["output_format"], "jpeg");
    let (format, _, _) = decode_image(body["data"][5]["b64_json"].as_str().unwrap());
    assert_eq!(format, image::ImageFormat::Jpeg);
}

#[actix_web::test]
async fn every_openai_size_reaches_fal_as_its_aspect_ratio() {
    let app = spawn_app_with_fake(
        FakeConfig {
            full_size_images: false,
            ..FakeConfig::default()
        },
        |s| s.cache.mode = CacheMode::Off,
    )
    .await;
    let table = [
        ("auto", "1:1"),
        ("256x256", "1:1"),
        ("512x512", "1:1"),
        ("1024x1024", "1:1"),
        ("1792x1024", "16:9"),
        ("1024x1792", "9:16"),
        ("1536x1024", "4:3"),
        ("1024x1536", "3:4"),
        ("1920x1080", "16:9"),
    ];
    for (size, _) in table {
        let res = app.post_generation(json!({"prompt":"s","size":size})).await;
        assert_eq!(res.status(), 200, "{size}");
    }
    let sent: Vec<String> = app
        .fal
        .submitted_bodies()
        .iter()
        .map(|b| b["aspect_ratio"].as_str().unwrap().to_owned())
        .collect();
    let expected: Vec<&str> = table.iter().map(|(_, r)| *r).collect();
    assert_eq!(sent, expected);
}

#[actix_web::test]
async fn a_plain_url_in_a_b64_answer_is_downloaded_without_the_fal_key() {
    let app = spawn_app().await;
    app.fal.inject(Fault {
        op: Op::Result,
        times: 1,
        action: FaultAction::UrlsInsteadOfDataUris,
    });

    let (status, _, body) = json(
        app.post_generation(
            json!({"prompt":"d","response_format":"b64_json","output_format":"webp"}),
        )
        .await,
    )
    .await;

    assert_eq!(status, 200, "{body}");
    let (format, w, h) = decode_image(body["data"][0]["b64_json"].as_str().unwrap());
    assert_eq!((format, w, h), (image::ImageFormat::WebP, 1024, 1024));
    let downloads: Vec<_> = app
        .fal
        .calls()
        .into_iter()
        .filter(|c| c.op == Op::File)
        .collect();
    assert_eq!(downloads.len(), 1);
    assert_eq!(
        downloads[0].authorization, None,
        "the key never goes with a download"
    );
}

#[actix_web::test]
async fn sync_mode_posts_once_to_the_run_host() {
    let app = spawn_app_with(|s| s.fal.mode = FalMode::Sync).await;

    let (status, _, body) = json(
        app.post_generation(json!({"prompt":"s","response_format":"b64_json"}))
            .await,
    )
    .await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(app.fal.count(Op::Run), 1);
    assert_eq!(app.fal.count(Op::Submit), 0);
    let calls = app.fal.calls();
    assert_eq!(calls[0].path, "/run/fal-ai/imagen4/preview/fast");
    assert_eq!(
        calls[0].authorization.as_deref(),
        Some(&*format!("Key {FAL_KEY}"))
    );
    assert_eq!(
        calls[0].body,
        Some(
            json!({"prompt":"s","aspect_ratio":"1:1","num_images":1,"output_format":"png","sync_mode":true})
        )
    );
}

#[actix_web::test]
async fn a_client_request_id_is_propagated() {
    let app = spawn_app().await;
    let res = app
        .post_generation_with(json!({"prompt":"r"}), &[("x-request-id", "my-trace-123")])
        .await;
    assert_eq!(res.headers()["x-request-id"], "my-trace-123");
    let res = app
        .post_generation_with(json!({}), &[("x-request-id", "my-trace-456")])
        .await;
    assert_eq!(res.status(), 400);
    assert_eq!(res.headers()["x-request-id"], "my-trace-456");
}

#[actix_web::test]
async fn the_deadline_answers_504_and_cancels_the_fal_job() {
    let app = spawn_app_with_fake(
        FakeConfig {
            queue_ms: 60_000,
            ..FakeConfig::default()
        },
        |s| s.server.request_timeout_seconds = 1,
    )
    .await;

    let err = expect_error(app.post_generation(json!({"prompt":"slow"})).await, 504).await;

    assert_eq!(err["code"], "upstream_timeout");
    assert_eq!(err["type"], "server_error");
    // The cancellation is sent in the background right after the answer.
    eventually("the fal job is cancelled", || app.fal.cancelled_jobs() == 1).await;
    let cancel = app
        .fal
        .calls()
        .into_iter()
        .find(|c| c.op == Op::Cancel)
        .unwrap();
    assert_eq!(cancel.method, "PUT");
    assert!(
        cancel.path.starts_with("/fal-ai/imagen4/requests/") && cancel.path.ends_with("/cancel")
    );
    assert_eq!(
        cancel.authorization.as_deref(),
        Some(&*format!("Key {FAL_KEY}"))
    );
}

#[actix_web::test]
async fn upstream_failures_become_the_documented_openai_errors() {
    struct Case {
        fault: Fault,
        status: u16,
        code: &'static str,
    }
    let respond = |op, status: u16, headers: Vec<(&str, &str)>, body: &str| Fault {
        op,
        times: 0,
        action: FaultAction::Respond {
            status,
            headers: headers
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            body: body.to_owned(),
        },
    };
    let cases = [
        Case {
            fault: respond(
                Op::Submit,
                401,
                vec![("x-fal-request-id", "a")],
                r#"{"detail":"bad key"}"#,
            ),
            status: 502,
            code: "upstream_error",
        },
        Case {
            fault: respond(Op::Submit, 403, vec![("x-fal-request-id", "a")], "{}"),
            status: 502,
            code: "upstream_error",
        },
        Case {
            fault: respond(
                Op::Result,
                422,
                vec![("x-fal-request-id", "a")],
                r#"{"detail":[{"loc":["body","prompt"],"msg":"The prompt was flagged","type":"content_policy_violation"}]}"#,
            ),
            status: 400,
            code: "content_policy_violation",
        },
        Case {
            fault: respond(
                Op::Submit,
                500,
                vec![("x-fal-request-id", "a")],
                "Traceback: secret",
            ),
            status: 502,
            code: "upstream_error",
        },
        Case {
            fault: Fault {
                op: Op::Status,
                times: 1,
                action: FaultAction::CompletedWithError {
                    error: "boom".into(),
                    error_type: "runner_disconnected".into(),
                    result_status: None,
                    result_body: None,
                },
            },
            status: 503,
            code: "upstream_unavailable",
        },
        Case {
            fault: Fault {
                op: Op::Status,
                times: 1,
                action: FaultAction::UnknownStatus,
            },
            status: 502,
            code: "upstream_error",
        },
        Case {
            fault: Fault {
                op: Op::Result,
                times: 1,
                action: FaultAction::NoImages,
            },
            status: 502,
            code: "upstream_error",
        },
    ];
    // Status faults are checked on both ways of watching a job: fal's
    // status event stream (the default) and polling.
    for (i, case) in cases.into_iter().enumerate() {
        for stream in [true, false] {
            let app = spawn_app_with(|s| s.fal.status_stream = stream).await;
            let mut fault = case.fault.clone();
            if stream && fault.op == Op::Status {
                fault.op = Op::Stream;
            }
            app.fal.inject(fault.clone());
            let res = app
                .post_generation(json!({"prompt": format!("case {i}")}))
                .await;
            let err = expect_error(res, case.status).await;
            assert_eq!(
                err["code"], case.code,
                "case {i} (stream {stream}): {fault:?} -> {err}"
            );
            let text = err.to_string();
            assert!(
                !text.contains("secret") && !text.contains(FAL_KEY),
                "case {i}: {text}"
            );
        }
    }
}

#[actix_web::test]
async fn ingress_errors_are_retried_and_the_retries_counted() {
    let app = spawn_app().await;
    app.fal.inject(Fault {
        op: Op::Submit,
        times: 2,
        action: FaultAction::Respond {
            status: 503,
            headers: vec![],
            body: "<html><body><center><h1>503 Service Temporarily Unavailable</h1></center><hr><center>nginx</center></body></html>".into(),
        },
    });

    let res = app.post_generation(json!({"prompt":"retry me"})).await;

    assert_eq!(res.status(), 200);
    assert_eq!(app.fal.count(Op::Submit), 3);
    let metrics = app.metrics().await;
    assert_eq!(
        series(
            &metrics,
            "image_gateway_upstream_retries_total",
            &[("operation", "submit")]
        ),
        Some(2.0)
    );
}

#[actix_web::test]
async fn a_refused_or_broken_status_stream_falls_back_to_polling() {
    for action in [
        FaultAction::Respond {
            status: 405,
            headers: vec![],
            body: String::new(),
        },
        FaultAction::Respond {
            status: 200,
            headers: vec![("content-type".into(), "text/event-stream".into())],
            body: ": only a comment\n\n".into(),
        },
    ] {
        let app = spawn_app_with_fake(
            FakeConfig {
                queue_ms: 30,
                ..FakeConfig::default()
            },
            |_| {},
        )
        .await;
        app.fal.inject(Fault {
            op: Op::Stream,
            times: 0,
            action,
        });

        let res = app.post_generation(json!({"prompt":"fallback"})).await;

        assert_eq!(res.status(), 200);
        assert_eq!(app.fal.count(Op::Stream), 1);
        assert!(
            app.fal.count(Op::Status) >= 1,
            "polled after the stream failed"
        );
    }
}

#[actix_web::test]
async fn with_the_status_stream_off_the_gateway_polls_until_completed() {
    let app = spawn_app_with_fake(
        FakeConfig {
            queue_ms: 40,
            run_ms: 40,
            ..FakeConfig::default()
        },
        |s| {
            s.fal.status_stream = false;
        },
    )
    .await;

    let res = app.post_generation(json!({"prompt":"poll"})).await;

    assert_eq!(res.status(), 200);
    assert_eq!(app.fal.count(Op::Stream), 0);
    assert!(
        app.fal.count(Op::Status) >= 2,
        "polled while queued and running"
    );
    assert_eq!(app.fal.count(Op::Result), 1);
}

/// Offline images are labelled in their pixels (the text itself is read
/// back glyph by glyph in `backend::local::stamp`'s unit tests): a shaded
/// banner with white text across the top, a shaded strip along the bottom.
#[actix_web::test]
async fn offline_images_carry_a_visible_label_top_and_bottom() {
    let app = spawn_app_with(|s| s.backend = BackendChoice::Local).await;
    let res = app
        .post_generation(json!({"prompt":"a lighthouse at dusk","response_format":"b64_json"}))
        .await;
    assert_eq!(res.headers()["x-image-gateway-backend"], "local");
    let body: serde_json::Value = res.json().await.unwrap();
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(body["data"][0]["b64_json"].as_str().unwrap())
        .unwrap();
    let img = image::load_from_memory(&bytes).unwrap().to_rgb8();
    let (w, h) = img.dimensions();
    let rows = |ys: std::ops::Range<u32>| {
        ys.flat_map(move |y| (0..w).map(move |x| (x, y)))
            .map(|(x, y)| img.get_pixel(x, y).0)
            .collect::<Vec<_>>()
    };
    let shaded = |px: &[u8; 3]| px.iter().all(|&c| c <= 77);
    let white = |px: &[u8; 3]| *px == [255, 255, 255];

    for edge in [rows(0..8), rows(h - 8..h)] {
        assert!(edge.iter().all(shaded), "the label's margin is shaded");
    }
    let top_text = rows(0..60).iter().filter(|p| white(p)).count();
    let bottom_text = rows(h - 60..h).iter().filter(|p| white(p)).count();
    assert!(
        top_text > 1_000,
        "{top_text} white pixels in the top banner"
    );
    assert!(
        bottom_text > 500,
        "{bottom_text} white pixels in the bottom strip"
    );
    let middle = rows(h / 2..h / 2 + 1);
    assert!(
        !middle.iter().all(shaded),
        "the picture itself is not shaded"
    );
}
