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

/// A job that fails: its status says COMPLETED with `error_type`, its result
/// answers `result_status` / `result_body` (fal's defaults for the type
/// when `None`).
fn completed_with_error(
    error_type: &str,
    result_status: Option<u16>,
    result_body: Option<&str>,
) -> Fault {
    Fault {
        op: Op::Stream,
        times: 1,
        action: FaultAction::CompletedWithError {
            error: format!("the job failed ({error_type})"),
            error_type: error_type.into(),
            result_status,
            result_body: result_body.map(str::to_owned),
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
            status: 503,
            code: "upstream_unavailable",
            submits: 1,
            retry_after: true,
            should_retry: Some("true"),
        },
        Case {
            name: "504 user start timeout",
            faults: vec![respond(
                Op::Submit,
                0,
                504,
                &[("x-fal-request-timeout-type", "user")],
                "nginx",
            )],
            status: 504,
            code: "upstream_timeout",
            submits: 1,
            retry_after: false,
            should_retry: Some("false"),
        },
        Case {
            name: "503 without nginx's page is fal's own",
            faults: vec![respond(Op::Submit, 0, 503, &[], r#"{"detail":"x"}"#)],
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
            faults: vec![completed_with_error("request_timeout", None, None)],
            status: 504,
            code: "upstream_timeout",
            submits: 1,
            retry_after: false,
            should_retry: Some("false"),
        },
        Case {
            name: "COMPLETED with runner_scheduling_failure",
            faults: vec![completed_with_error(
                "runner_scheduling_failure",
                None,
                None,
            )],
            status: 503,
            code: "upstream_unavailable",
            submits: 1,
            retry_after: true,
            should_retry: Some("true"),
        },
        Case {
            name: "COMPLETED with error whose result is a content-policy 422",
            faults: vec![completed_with_error(
                "content_policy_violation",
                Some(422),
                Some(
                    r#"{"detail":[{"loc":["body","prompt"],"msg":"The prompt was flagged","type":"content_policy_violation"}]}"#,
                ),
            )],
            status: 400,
            code: "content_policy_violation",
            submits: 1,
            retry_after: false,
            should_retry: Some("false"),
        },
        Case {
            name: "COMPLETED with error whose result is a validation 422",
            faults: vec![completed_with_error(
                "value_error",
                Some(422),
                Some(
                    r#"{"detail":[{"loc":["body","aspect_ratio"],"msg":"Input should be '1:1'","type":"literal_error"}]}"#,
                ),
            )],
            status: 400,
            code: "",
            submits: 1,
            retry_after: false,
            should_retry: Some("false"),
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
            code: "",
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
        assert_eq!(
            err["code"].as_str().unwrap_or(""),
            case.code,
            "{}: {err}",
            case.name
        );
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
                    &[
                        ("model", "imagen-4-fast"),
                        ("endpoint", "fal-ai/imagen4/preview/fast"),
                        ("outcome", "auth_error")
                    ]
                ),
                Some(1.0)
            );
        }
        assert_nothing_left(&app).await;
    }
}

#[actix_web::test]
async fn a_hang_anywhere_ends_in_504_with_the_fal_job_cancelled() {
    // A hung submit has no request id to cancel; a hung result belongs to
    // a job already done; a hung watch cancels the job.
    for (op, stream, cancels) in [
        (Op::Submit, true, 0),
        (Op::Stream, true, 1),
        (Op::Status, false, 1),
        (Op::Result, true, 0),
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
        eventually("the cancellation", || app.fal.count(Op::Cancel) == cancels).await;
        assert_nothing_left(&app).await;
        let m = app.metrics().await;
        assert_eq!(
            series(
                &m,
                "image_gateway_upstream_jobs_total",
                &[
                    ("model", "imagen-4-fast"),
                    ("endpoint", "fal-ai/imagen4/preview/fast"),
                    ("outcome", "timeout")
                ]
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

/// The calls of one operation the fake received, oldest first.
fn calls_of(app: &TestApp, op: Op) -> Vec<fake_fal::Call> {
    app.fal.calls().into_iter().filter(|c| c.op == op).collect()
}

fn fal_header<'a>(call: &'a fake_fal::Call, name: &str) -> Option<&'a str> {
    call.fal_headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[actix_web::test]
async fn a_submit_that_times_out_after_it_was_sent_is_never_repeated() {
    let app = spawn_app_with(|s| {
        s.fal.call_timeout_seconds = 1;
        s.fal.max_retries = 5;
    })
    .await;
    // fal receives the submit and answers only after the gateway gave up.
    app.fal.inject(Fault {
        op: Op::Submit,
        times: 0,
        action: FaultAction::Delay { ms: 2_500 },
    });

    let res = app.post_generation(json!({"prompt":"pay once"})).await;

    // Nor should the client's SDK repeat it: that would be a second job too.
    assert_eq!(res.headers()["x-should-retry"], "false");
    let err = expect_error(res, 502).await;
    assert_eq!(err["code"], "upstream_error");
    assert!(
        err["message"].as_str().unwrap().contains("not repeated"),
        "{err}"
    );
    // Whatever else happens, no second paid job.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.fal.count(Op::Submit), 1, "exactly one submit");
    let m = app.metrics().await;
    assert_eq!(
        series(
            &m,
            "image_gateway_upstream_unconfirmed_total",
            &[("operation", "submit")]
        ),
        Some(1.0)
    );
    assert_eq!(
        series(
            &m,
            "image_gateway_upstream_jobs_total",
            &[
                ("model", "imagen-4-fast"),
                ("endpoint", "fal-ai/imagen4/preview/fast"),
                ("outcome", "unconfirmed")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        series(
            &m,
            "image_gateway_upstream_retries_total",
            &[("operation", "submit")]
        ),
        None
    );
    assert_nothing_left(&app).await;
}

#[actix_web::test]
async fn a_deadline_during_submit_cancels_the_job_the_submit_started() {
    let app = spawn_app_with_fake(
        FakeConfig {
            run_ms: 30_000,
            ..FakeConfig::default()
        },
        |s| s.server.request_timeout_seconds = 1,
    )
    .await;
    app.fal.inject(Fault {
        op: Op::Submit,
        times: 1,
        action: FaultAction::Delay { ms: 1_600 },
    });

    let err = expect_error(app.post_generation(json!({"prompt":"late"})).await, 504).await;

    assert_eq!(err["code"], "upstream_timeout");
    let message = err["message"].as_str().unwrap();
    assert!(
        message.contains("had not confirmed") && !message.contains("was cancelled"),
        "{message}"
    );
    // The submit answers after the deadline; the job it started is cancelled.
    eventually("the late job is cancelled", || {
        app.fal.cancelled_jobs() == 1
    })
    .await;
    assert_eq!(app.fal.count(Op::Submit), 1);
    let m = app.metrics().await;
    assert_eq!(
        series(
            &m,
            "image_gateway_upstream_cancel_outcomes_total",
            &[("outcome", "cancellation_requested")]
        ),
        Some(1.0)
    );
    assert_eq!(
        series(
            &m,
            "image_gateway_upstream_cancellations_total",
            &[("reason", "deadline")]
        ),
        Some(1.0)
    );
}

#[actix_web::test]
async fn a_client_hanging_up_during_submit_cancels_the_job_the_submit_started() {
    let app = spawn_app_with_fake(
        FakeConfig {
            run_ms: 30_000,
            ..FakeConfig::default()
        },
        |_| {},
    )
    .await;
    app.fal.inject(Fault {
        op: Op::Submit,
        times: 1,
        action: FaultAction::Delay { ms: 800 },
    });

    let gone = app
        .client
        .post(app.url("/v1/images/generations"))
        .header("content-type", "application/json")
        .body(json!({"prompt":"hang up"}).to_string())
        .timeout(Duration::from_millis(300))
        .send()
        .await;

    assert!(gone.is_err(), "the client gave up first");
    eventually("the job is cancelled", || app.fal.cancelled_jobs() == 1).await;
    let m = app.metrics().await;
    assert_eq!(
        series(
            &m,
            "image_gateway_upstream_cancellations_total",
            &[("reason", "cancelled")]
        ),
        Some(1.0)
    );
}

#[actix_web::test]
async fn a_504_says_cancelled_only_when_fal_confirmed_it() {
    // (cancel faults, what the 504 must say, fal's cancel calls, outcome)
    let cases: Vec<(Vec<Fault>, &str, u64, &str)> = vec![
        (
            vec![],
            "the upstream job was cancelled",
            1,
            "cancellation_requested",
        ),
        (
            // Retried like fal's clients: ingress errors, then success.
            vec![respond(Op::Cancel, 2, 503, &[], NGINX_502)],
            "the upstream job was cancelled",
            3,
            "cancellation_requested",
        ),
        (
            vec![respond(Op::Cancel, 0, 500, &[FROM_FAL], "{}")],
            "may still run",
            1,
            "failed",
        ),
        (
            vec![respond(
                Op::Cancel,
                1,
                400,
                &[FROM_FAL],
                r#"{"status":"ALREADY_COMPLETED"}"#,
            )],
            "too late to be cancelled",
            1,
            "already_completed",
        ),
    ];
    for (faults, says, calls, outcome) in cases {
        let app = spawn_app_with_fake(
            FakeConfig {
                queue_ms: 30_000,
                ..FakeConfig::default()
            },
            |s| s.server.request_timeout_seconds = 1,
        )
        .await;
        for f in faults {
            app.fal.inject(f);
        }

        let err = expect_error(app.post_generation(json!({"prompt":"slow"})).await, 504).await;

        let message = err["message"].as_str().unwrap();
        assert!(message.contains(says), "{says}: {message}");
        if says != "the upstream job was cancelled" {
            assert!(!message.contains("was cancelled"), "{message}");
        }
        assert_eq!(app.fal.count(Op::Cancel), calls, "{says}");
        let m = app.metrics().await;
        assert_eq!(
            series(
                &m,
                "image_gateway_upstream_cancel_outcomes_total",
                &[("outcome", outcome)]
            ),
            Some(1.0),
            "{says}"
        );
    }
}

#[actix_web::test]
async fn a_protocol_error_while_watching_status_cancels_the_job() {
    let app = spawn_app_with_fake(
        FakeConfig {
            queue_ms: 30_000,
            ..FakeConfig::default()
        },
        |s| s.fal.status_stream = false,
    )
    .await;
    app.fal.inject(Fault {
        op: Op::Status,
        times: 1,
        action: FaultAction::UnknownStatus,
    });

    let err = expect_error(app.post_generation(json!({"prompt":"odd"})).await, 502).await;

    assert_eq!(err["code"], "upstream_error");
    eventually("the job is cancelled", || app.fal.cancelled_jobs() == 1).await;
    let m = app.metrics().await;
    assert_eq!(
        series(
            &m,
            "image_gateway_upstream_cancellations_total",
            &[("reason", "error")]
        ),
        Some(1.0)
    );
}

#[actix_web::test]
async fn submits_carry_a_start_timeout_from_the_deadline_and_fals_controls() {
    let app = spawn_app().await;
    assert_eq!(
        app.post_generation(json!({"prompt":"defaults"}))
            .await
            .status(),
        200
    );
    let submit = &calls_of(&app, Op::Submit)[0];
    let timeout: f64 = fal_header(submit, "x-fal-request-timeout")
        .expect("a start timeout")
        .parse()
        .unwrap();
    // The test deadline is 20 s.
    assert!((15.0..=20.0).contains(&timeout), "{timeout}");
    assert_eq!(
        fal_header(submit, "x-app-fal-disable-fallback"),
        Some("true")
    );
    assert_eq!(fal_header(submit, "x-fal-store-io"), None);
    assert_eq!(fal_header(submit, "x-fal-queue-priority"), None);
    assert_eq!(
        fal_header(submit, "x-fal-object-lifecycle-preference"),
        None
    );
    assert_eq!(submit.query, "");

    let app = spawn_app_with(|s| {
        s.fal.store_io = false;
        s.fal.disable_fallback = false;
        s.fal.object_expiration_seconds = 7_200;
        s.fal.queue_priority = image_gateway::config::QueuePriority::Low;
        s.fal.max_queue_length = 3;
    })
    .await;
    assert_eq!(
        app.post_generation(json!({"prompt":"private"}))
            .await
            .status(),
        200
    );
    let submit = &calls_of(&app, Op::Submit)[0];
    assert_eq!(fal_header(submit, "x-fal-store-io"), Some("0"));
    assert_eq!(fal_header(submit, "x-app-fal-disable-fallback"), None);
    assert_eq!(fal_header(submit, "x-fal-queue-priority"), Some("low"));
    assert_eq!(
        fal_header(submit, "x-fal-object-lifecycle-preference"),
        Some(r#"{"expiration_duration_seconds":7200}"#)
    );
    assert_eq!(submit.query, "fal_max_queue_length=3");
    // Status and result calls are not paid: no controls there.
    let result = &calls_of(&app, Op::Result)[0];
    assert!(result.fal_headers.is_empty(), "{:?}", result.fal_headers);
}

#[actix_web::test]
async fn a_full_short_queue_is_a_429_at_once() {
    let app = spawn_app_with(|s| s.fal.max_queue_length = 1).await;
    app.fal.inject(respond(
        Op::Submit,
        0,
        429,
        &[FROM_FAL],
        r#"{"detail":"queue full"}"#,
    ));

    let err = expect_error(app.post_generation(json!({"prompt":"busy"})).await, 429).await;

    assert_eq!(err["code"], "rate_limit_exceeded");
    assert_eq!(app.fal.count(Op::Submit), 1, "not retried");
}

#[actix_web::test]
async fn a_job_that_cannot_start_before_the_deadline_is_dropped_by_fal_and_not_retried() {
    // fal holds the job queued past the start timeout the gateway sent.
    let app = spawn_app_with_fake(
        FakeConfig {
            queue_ms: 30_000,
            ..FakeConfig::default()
        },
        |s| s.server.request_timeout_seconds = 3,
    )
    .await;

    let err = expect_error(app.post_generation(json!({"prompt":"queued"})).await, 504).await;

    assert_eq!(err["code"], "upstream_timeout");
    assert!(
        err["message"].as_str().unwrap().contains("could not start"),
        "{err}"
    );
    assert_eq!(app.fal.count(Op::Submit), 1);
    assert_eq!(app.fal.count(Op::Result), 1);
}

#[actix_web::test]
async fn urls_from_the_submit_answer_are_followed_only_on_configured_fal_origins() {
    // fal advertises URLs under a path of its own choosing on the configured
    // origin: they are followed, so every status/result call lands there.
    let app = spawn_app().await;
    let port = app.fal.port();
    app.fal.configure(FakeConfig {
        advertised_base: format!("http://127.0.0.1:{port}/adv"),
        ..FakeConfig::default()
    });
    let res = app
        .post_generation(json!({"prompt":"follow","response_format":"b64_json"}))
        .await;
    assert_eq!(res.status(), 200);
    let followed: Vec<_> = app
        .fal
        .calls()
        .into_iter()
        .filter(|c| matches!(c.op, Op::Stream | Op::Status | Op::Result))
        .collect();
    assert!(!followed.is_empty());
    assert!(
        followed.iter().all(|c| c.path.starts_with("/adv/")),
        "{followed:?}"
    );

    // The same server under another origin (`localhost`) is not configured:
    // the gateway builds the URLs from queue_url instead.
    let app = spawn_app_with_fake(FakeConfig::default(), |_| {}).await;
    let port = app.fal.port();
    app.fal.configure(FakeConfig {
        advertised_base: format!("http://localhost:{port}/adv"),
        ..FakeConfig::default()
    });
    let res = app
        .post_generation(json!({"prompt":"stay","response_format":"b64_json"}))
        .await;
    assert_eq!(res.status(), 200);
    let calls = app.fal.calls();
    assert!(
        calls.iter().all(|c| !c.path.starts_with("/adv/")),
        "{calls:?}"
    );
    assert_eq!(app.fal.count(Op::Result), 1);
}

#[actix_web::test]
async fn a_connect_error_fails_over_to_the_backup_host_once() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://127.0.0.1:{}", closed.local_addr().unwrap().port());
    drop(closed);
    let app = spawn_app_with_fake(FakeConfig::default(), |s| {
        s.fal.backup_queue_url = s.fal.queue_url.clone();
        s.fal.queue_url = dead.clone();
    })
    .await;

    let res = app.post_generation(json!({"prompt":"backup"})).await;

    assert_eq!(res.status(), 200);
    assert_eq!(app.fal.count(Op::Submit), 1);
    let m = app.metrics().await;
    assert_eq!(
        series(
            &m,
            "image_gateway_upstream_retries_total",
            &[("operation", "submit")]
        ),
        None,
        "the failover is not a retry"
    );
}

#[actix_web::test]
async fn retries_stop_when_their_budget_is_spent() {
    let app = spawn_app_with(|s| {
        s.fal.max_retries = 9;
        s.fal.retry_base_delay_ms = 300;
        s.fal.retry_max_delay_ms = 300;
        s.fal.retry_budget_seconds = 1;
    })
    .await;
    app.fal.inject(respond(Op::Submit, 0, 502, &[], NGINX_502));

    let err = expect_error(app.post_generation(json!({"prompt":"budget"})).await, 502).await;

    assert_eq!(err["code"], "upstream_error");
    // Delays of 150-450 ms within a 1 s budget: 2 to 7 attempts, never 10.
    let submits = app.fal.count(Op::Submit);
    assert!((2..=7).contains(&submits), "{submits} submits");
}

#[actix_web::test]
async fn a_stalled_status_stream_falls_back_to_polling_before_the_deadline() {
    let app = spawn_app_with_fake(
        FakeConfig {
            run_ms: 300,
            ..FakeConfig::default()
        },
        |s| s.fal.status_stream_idle_timeout_ms = 300,
    )
    .await;
    app.fal.inject(Fault {
        op: Op::Stream,
        times: 1,
        action: FaultAction::Stall,
    });

    let res = app.post_generation(json!({"prompt":"stalled"})).await;

    assert_eq!(res.status(), 200, "answered before the 20 s deadline");
    assert!(app.fal.count(Op::Status) >= 1, "it polled");
    let m = app.metrics().await;
    assert_eq!(
        series(
            &m,
            "image_gateway_upstream_requests_total",
            &[("operation", "stream"), ("outcome", "idle_timeout")]
        ),
        Some(1.0)
    );
}

#[actix_web::test]
async fn keep_alive_comments_keep_a_quiet_status_stream() {
    let app = spawn_app_with_fake(
        // Silent for 2 s but for comments every 100 ms; the idle timeout
        // (1.5 s) leaves a loaded machine plenty of slack.
        FakeConfig {
            run_ms: 2_000,
            stream_keepalive_ms: 100,
            ..FakeConfig::default()
        },
        |s| s.fal.status_stream_idle_timeout_ms = 1_500,
    )
    .await;

    let res = app.post_generation(json!({"prompt":"quiet"})).await;

    assert_eq!(res.status(), 200);
    assert_eq!(app.fal.count(Op::Status), 0, "no polling");
    assert_eq!(app.fal.count(Op::Stream), 1);
}

#[actix_web::test]
async fn a_status_stream_that_is_not_an_event_stream_is_dropped_for_polling() {
    let app = spawn_app().await;
    app.fal.inject(respond(
        Op::Stream,
        1,
        200,
        &[("content-type", "text/html"), FROM_FAL],
        "<html>hello</html>",
    ));

    let res = app.post_generation(json!({"prompt":"html"})).await;

    assert_eq!(res.status(), 200);
    assert!(app.fal.count(Op::Status) >= 1);
    let m = app.metrics().await;
    assert_eq!(
        series(
            &m,
            "image_gateway_upstream_requests_total",
            &[("operation", "stream"), ("outcome", "not_event_stream")]
        ),
        Some(1.0)
    );
}

#[actix_web::test]
async fn every_fal_answer_carries_its_own_request_id() {
    let app = spawn_app().await;
    let first = reqwest::Client::new()
        .post(format!(
            "{}/fal-ai/imagen4/preview/fast",
            app.fal.queue_url()
        ))
        .body(r#"{"prompt":"a"}"#)
        .send()
        .await
        .unwrap();
    let second = reqwest::Client::new()
        .post(format!(
            "{}/fal-ai/imagen4/preview/fast",
            app.fal.queue_url()
        ))
        .body(r#"{"prompt":"b"}"#)
        .send()
        .await
        .unwrap();
    let id = |r: &reqwest::Response| r.headers()["x-fal-request-id"].clone();
    assert_ne!(id(&first), id(&second));
}
