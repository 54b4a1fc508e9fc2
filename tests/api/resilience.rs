//! Upstream faults, hangs and overload: each ends in the right OpenAI-shaped
//! answer, with the right retry headers, and leaves nothing running.

use std::time::Duration;

use fake_fal::{FakeConfig, Fault, FaultAction, Op};
use futures_util::future::join_all;
use image_gateway::config::Secret;
use serde_json::json;

use crate::helpers::*;

fn respond(op: Op, times: u32, status: u16, headers: &[(&str, &str)], body: &str) -> Fault {
    Fault {
        op,
        times,
        action: FaultAction::Respond {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.to_owned(),
        },
    }
}

const NGINX_502: &str = "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>";
const FROM_FAL: (&str, &str) = ("x-fal-request-id", "fal-req-1");

/// Nothing of a finished request may linger: no flight, no job slot.
async fn assert_nothing_left(app: &TestApp) {
    eventually("flights drained", || app.service.in_flight() == 0).await;
    let m = app.metrics().await;
    assert_eq!(
        series(&m, "image_gateway_upstream_jobs_in_flight", &[]),
        Some(0.0)
    );
    assert_eq!(
        series(&m, "image_gateway_upstream_jobs_queued", &[]),
        Some(0.0)
    );
}

struct Case {
    name: &'static str,
    faults: Vec<Fault>,
    status: u16,
    code: &'static str,
    /// Submits fal must have seen (retries included).
    submits: u64,
    retry_after: bool,
    should_retry: Option<&'static str>,
}

#[actix_web::test]
async fn every_upstream_fault_ends_in_its_documented_answer() {
    let retries = 2;
    let cases = vec![
        Case {
            name: "429 with retry-after",
            faults: vec![respond(
                Op::Submit,
                0,
                429,
                &[("retry-after", "0.01"), FROM_FAL],
                "{}",
            )],
            status: 429,
            code: "rate_limit_exceeded",
            submits: 1 + retries,
            retry_after: true,
            should_retry: Some("true"),
        },
        Case {
            name: "429 without retry-after",
            faults: vec![respond(Op::Submit, 0, 429, &[FROM_FAL], "{}")],
            status: 429,
            code: "rate_limit_exceeded",
            submits: 1 + retries,
            retry_after: true,
            should_retry: Some("true"),
        },
        Case {
            name: "500 from fal",
            faults: vec![respond(
                Op::Submit,
                0,
                500,
                &[FROM_FAL],
                r#"{"detail":"Internal Server Error"}"#,
            )],
            status: 502,
            code: "upstream_error",
            submits: 1,
            retry_after: false,
            should_retry: None,
        },
        Case {
            name: "502 from the ingress",
            faults: vec![respond(Op::Submit, 0, 502, &[], NGINX_502)],
            status: 502,
            code: "upstream_error",
            submits: 1 + retries,
            retry_after: false,
            should_retry: None,
        },
        Case {
            name: "503 from the ingress",
            faults: vec![respond(Op::Submit, 0, 503, &[], NGINX_502)],
            status: 502,
            code: "upstream_error",
            submits: 1 + retries,
            retry_after: false,
            should_retry: None,
        },
        Case {
            name: "504 from the ingress",
            faults: vec![respond(Op::Submit, 0, 504, &[], NGINX_502)],
            status: 502,
            code: "upstream_error",
            submits: 1 + retries,
            retry_after: false,
            should_retry: None,
        },
        Case {
            name: "502 from fal",
            faults: vec![respond(Op::Submit, 0, 502, &[FROM_FAL], "{}")],
            status: 502,
            code: "upstream_error",
            submits: 1,
            retry_after: false,
            should_retry: None,
        },
        Case {
            name: "503 from fal",
            faults: vec![respond(
                Op::Submit,
                0,
                503,
                &[FROM_FAL, ("x-fal-error-type", "runner_scheduling_failure")],
                r#"{"detail":"x","error_type":"runner_scheduling_failure"}"#,
            )],
            status: 502,
            code: "upstream_error",
            submits: 1,
            retry_after: false,
            should_retry: None,
        },
        Case {
            name: "504 user start timeout",
            faults: vec![respond(
                Op::Submit,
                0,
                504,
                &[("x-fal-request-timeout-type", "user")],
                "{}",
            )],
            status: 502,
            code: "upstream_error",
            submits: 1,
            retry_after: false,
            should_retry: None,
        },
        Case {
            name: "401 bad FAL_KEY",
            faults: vec![respond(
                Op::Submit,
                0,
                401,
                &[FROM_FAL],
                r#"{"detail":"Invalid key"}"#,
            )],
            status: 502,
            code: "upstream_error",
            submits: 1,
            retry_after: false,
            should_retry: Some("false"),
        },
        Case {
            name: "403 bad FAL_KEY",
            faults: vec![respond(Op::Submit, 0, 403, &[FROM_FAL], "{}")],
            status: 502,
            code: "upstream_error",
            submits: 1,
            retry_after: false,
            should_retry: Some("false"),
        },
        Case {
            name: "malformed JSON status",
            faults: vec![Fault {
                op: Op::Status,
                times: 1,
                action: FaultAction::MalformedJson,
            }],
            status: 502,
            code: "upstream_error",
            submits: 1,
            retry_after: false,
            should_retry: None,
        },
        Case {
            name: "malformed JSON submit",
            faults: vec![Fault {
                op: Op::Submit,
                times: 1,
                action: FaultAction::MalformedJson,
            }],
            status: 502,
            code: "upstream_error",
            submits: 1,
            retry_after: false,
            should_retry: None,
        },
        Case {
            name: "unknown status",
            faults: vec![Fault {
                op: Op::Stream,
                times: 1,
                action: FaultAction::UnknownStatus,
            }],
            status: 502,
            code: "upstream_error",
            submits: 1,
            retry_after: false,
            should_retry: None,
        },
        Case {
            name: "result without images",
            faults: vec![Fault {
                op: Op::Result,
                times: 1,
                action: FaultAction::NoImages,
            }],
            status: 502,
            code: "upstream_error",
            submits: 1,
            retry_after: false,
            should_retry: None,
        },
        Case {
            name: "data URI not base64",
            faults: vec![Fault {
                op: Op::Result,
                times: 1,
                action: FaultAction::BadDataUri,
            }],
            status: 502,
            code: "upstream_error",
            submits: 1,
            retry_after: false,
            should_retry: None,
        },
        Case {
            name: "answer over the size limit",
            faults: vec![Fault {
                op: Op::Result,
                times: 1,
                action: FaultAction::Huge {
                    bytes: 3 * 1024 * 1024,
                },
            }],
            status: 502,
            code: "upstream_error",
            submits: 1,
            retry_after: false,
            should_retry: None,
        },
        Case {
            name: "COMPLETED with request_timeout",
            faults: vec![Fault {
                op: Op::Stream,
                times: 1,
                action: FaultAction::CompletedWithError {
                    error: "Request timed out".into(),
                    error_type: "request_timeout".into(),
                },
            }],
            status: 502,
            code: "upstream_error",
            submits: 1,
            retry_after: false,
            should_retry: None,
        },
        Case {
            name: "COMPLETED with runner_scheduling_failure",
            faults: vec![Fault {
                op: Op::Stream,
                times: 1,
                action: FaultAction::CompletedWithError {
                    error: "No runner".into(),
                    error_type: "runner_scheduling_failure".into(),
                },
            }],
            status: 502,
            code: "upstream_error",
            submits: 1,
            retry_after: false,
            should_retry: None,
        },
        Case {
            name: "result 422 content policy",
            faults: vec![respond(
                Op::Result,
                1,
                422,
                &[FROM_FAL],
                r#"{"detail":[{"loc":["body","prompt"],"msg":"Prompt violates the content policy","type":"content_policy_violation"}]}"#,
            )],
            status: 400,
            code: "content_policy_violation",
            submits: 1,
            retry_after: false,
            should_retry: Some("false"),
        },
        Case {
            name: "submit 422 validation",
            faults: vec![respond(
                Op::Submit,
                1,
                422,
                &[FROM_FAL],
                r#"{"detail":[{"loc":["body","prompt"],"msg":"bad","type":"value_error"}]}"#,
            )],
            status: 400,
            code: "content_policy_violation",
            submits: 1,
            retry_after: false,
            should_retry: Some("false"),
        },
    ];
    for case in cases {
        // Faults on status polls need polling; the rest use the event stream.
        let polls = case.faults.iter().any(|f| f.op == Op::Status);
        let app = spawn_app_with(|s| {
            s.fal.status_stream = !polls;
            s.fal.max_retries = retries as u32;
            s.fal.max_response_bytes = 2 * 1024 * 1024;
            s.fal.retry_max_delay_ms = 20;
        })
        .await;
        for f in &case.faults {
            app.fal.inject(f.clone());
        }
        eprintln!("case: {}", case.name);
        let res = app
            .post_generation(json!({"prompt": case.name, "response_format": "b64_json"}))
            .await;
        let headers = res.headers().clone();
        let err = expect_error(res, case.status).await;
        assert_eq!(err["code"], case.code, "{}: {err}", case.name);
        assert_eq!(
            app.fal.count(Op::Submit),
            case.submits,
            "{}: submits",
            case.name
        );
        assert_eq!(
            headers.contains_key("retry-after"),
            case.retry_after,
            "{}: retry-after",
            case.name
        );
        assert_eq!(
            headers.get("x-should-retry").map(|v| v.to_str().unwrap()),
            case.should_retry,
            "{}: x-should-retry",
            case.name
        );
        let text = err.to_string();
        assert!(
            !text.contains("nginx") && !text.contains("Invalid key") && !text.contains(FAL_KEY),
            "{}: {text}",
            case.name
        );
        if case.name.contains("FAL_KEY") {
            assert!(text.contains("upstream credentials"), "{text}");
            let m = app.metrics().await;
            assert_eq!(
                series(
                    &m,
                    "image_gateway_upstream_jobs_total",
                    &[("model", "imagen-4-fast"), ("outcome", "auth_error")]
                ),
                Some(1.0)
            );
        }
        assert_nothing_left(&app).await;
    }
}

#[actix_web::test]
async fn a_hang_anywhere_ends_in_504_with_the_fal_job_cancelled() {
    for (op, stream, cancels) in [
        (Op::Submit, true, 0),
        (Op::Stream, true, 1),
        (Op::Status, false, 1),
        (Op::Result, true, 1),
    ] {
        let app = spawn_app_with(|s| {
            s.server.request_timeout_seconds = 1;
            s.fal.status_stream = stream;
        })
        .await;
        app.fal.inject(Fault {
            op,
            times: 0,
            action: FaultAction::Hang,
        });

        let err = expect_error(app.post_generation(json!({"prompt":"hang"})).await, 504).await;

        assert_eq!(err["code"], "upstream_timeout", "{op:?}");
        // A hung submit has no request id to cancel; every other hang does.
        eventually("the cancellation", || app.fal.count(Op::Cancel) == cancels).await;
        assert_nothing_left(&app).await;
        let m = app.metrics().await;
        assert_eq!(
            series(
                &m,
                "image_gateway_upstream_jobs_total",
                &[("model", "imagen-4-fast"), ("outcome", "timeout")]
            ),
            Some(1.0),
            "{op:?}"
        );
    }
}

#[actix_web::test]
async fn an_unreachable_fal_is_a_502_after_retries() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = closed.local_addr().unwrap().port();
    drop(closed);
    for url in [
        format!("http://127.0.0.1:{dead_port}"),
        "http://fal.nonexistent.invalid".to_owned(),
    ] {
        let app = spawn_app_with(|s| {
            s.fal.queue_url = url.clone();
            s.fal.max_retries = 2;
        })
        .await;
        let err = expect_error(
            app.post_generation(json!({"prompt":"nobody home"})).await,
            502,
        )
        .await;
        assert_eq!(err["code"], "upstream_error", "{url}");
        assert!(
            err["message"]
                .as_str()
                .unwrap()
                .contains("could not be reached"),
            "{err}"
        );
        let m = app.metrics().await;
        assert_eq!(
            series(
                &m,
                "image_gateway_upstream_retries_total",
                &[("operation", "submit")]
            ),
            Some(2.0),
            "{url}"
        );
        assert_eq!(
            series(
                &m,
                "image_gateway_upstream_requests_total",
                &[("operation", "submit"), ("outcome", "transport_error")]
            ),
            Some(3.0),
            "{url}"
        );
    }
}

#[actix_web::test]
async fn fal_recovering_after_a_few_failures_succeeds_with_the_retries_counted() {
    let app = spawn_app().await;
    app.fal.inject(respond(
        Op::Submit,
        1,
        429,
        &[("retry-after", "0.02"), FROM_FAL],
        "{}",
    ));
    app.fal.inject(respond(Op::Submit, 1, 502, &[], NGINX_502));
    app.fal.inject(respond(Op::Result, 2, 503, &[], NGINX_502));

    let res = app.post_generation(json!({"prompt":"recovers"})).await;

    assert_eq!(res.status(), 200);
    assert_eq!(app.fal.count(Op::Submit), 3);
    assert_eq!(app.fal.count(Op::Result), 3);
    let m = app.metrics().await;
    assert_eq!(
        series(
            &m,
            "image_gateway_upstream_retries_total",
            &[("operation", "submit")]
        ),
        Some(2.0)
    );
    assert_eq!(
        series(
            &m,
            "image_gateway_upstream_retries_total",
            &[("operation", "result")]
        ),
        Some(2.0)
    );
    assert_eq!(
        series(
            &m,
            "image_gateway_upstream_requests_total",
            &[("operation", "submit"), ("outcome", "rate_limited")]
        ),
        Some(1.0)
    );
}

#[actix_web::test]
async fn past_the_job_cap_and_queue_the_gateway_sheds_load_at_once() {
    let app = spawn_app_with_fake(
        FakeConfig {
            queue_ms: 600,
            ..FakeConfig::default()
        },
        |s| {
            s.limits.max_concurrent_jobs = 1;
            s.limits.max_queued_jobs = 1;
        },
    )
    .await;

    let started = std::time::Instant::now();
    let responses = join_all((0..3).map(|i| {
        let app = &app;
        async move {
            // Stagger so the order is known: running, queued, shed.
            tokio::time::sleep(Duration::from_millis(60 * i)).await;
            let res = app
                .post_generation(json!({"prompt": format!("distinct {i}")}))
                .await;
            (
                i,
                res.status().as_u16(),
                res.headers().get("retry-after").cloned(),
                started.elapsed(),
            )
        }
    }))
    .await;

    assert_eq!(responses[0].1, 200);
    assert_eq!(responses[1].1, 200);
    assert_eq!(responses[2].1, 429);
    assert!(responses[2].2.is_some(), "retry-after on a shed request");
    assert!(
        responses[2].3 < responses[0].3,
        "shed at once, not after waiting"
    );
    let m = app.metrics().await;
    assert_eq!(series(&m, "image_gateway_load_shed_total", &[]), Some(1.0));
    assert_nothing_left(&app).await;
}

#[actix_web::test]
async fn per_key_rate_limits_answer_429_with_openai_headers() {
    let app = spawn_app_with(|s| {
        s.auth.api_keys = vec![Secret::new("sk-a"), Secret::new("sk-b")];
        s.limits.requests_per_minute = 2;
        s.limits.images_per_minute = 5;
        s.metrics.public = true;
    })
    .await;
    let a = [("authorization", "Bearer sk-a")];

    let first = app.post_generation_with(json!({"prompt":"1"}), &a).await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["x-ratelimit-limit-requests"], "2");
    assert_eq!(first.headers()["x-ratelimit-remaining-requests"], "1");
    assert_eq!(first.headers()["x-ratelimit-remaining-images"], "4");
    let second = app
        .post_generation_with(json!({"prompt":"2","n":2}), &a)
        .await;
    assert_eq!(second.status(), 200);
    assert_eq!(second.headers()["x-ratelimit-remaining-requests"], "0");
    assert_eq!(second.headers()["x-ratelimit-remaining-images"], "2");

    let third = app.post_generation_with(json!({"prompt":"3"}), &a).await;
    let headers = third.headers().clone();
    let err = expect_error(third, 429).await;
    assert_eq!(err["type"], "rate_limit_error");
    assert_eq!(err["code"], "rate_limit_exceeded");
    assert_eq!(headers["x-ratelimit-limit-requests"], "2");
    assert_eq!(headers["x-ratelimit-remaining-requests"], "0");
    assert!(
        headers["x-ratelimit-reset-requests"]
            .to_str()
            .unwrap()
            .ends_with('s')
    );
    assert!(
        headers["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );

    // Another key has its own budget; images are counted by n.
    let b = [("authorization", "Bearer sk-b")];
    assert_eq!(
        app.post_generation_with(json!({"prompt":"b","n":4}), &b)
            .await
            .status(),
        200
    );
    let over = app
        .post_generation_with(json!({"prompt":"b2","n":2}), &b)
        .await;
    assert_eq!(over.headers()["x-ratelimit-remaining-images"], "0");
    assert_eq!(over.status(), 429);
    let m = app.metrics().await;
    assert_eq!(
        series(
            &m,
            "image_gateway_rate_limited_total",
            &[("limit", "requests")]
        ),
        Some(1.0)
    );
    assert_eq!(
        series(
            &m,
            "image_gateway_rate_limited_total",
            &[("limit", "images")]
        ),
        Some(1.0)
    );
}
