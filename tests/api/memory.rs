//! `limits.max_memory_bytes`: the memory of work in flight is the
//! operator's number. Jobs waiting at fal hold a small room; their answers
//! are read only once the room they may need is free (in turn, paid work is
//! never shed); new work past the room or the overcommit is shed with a 429
//! (OpenAI's shape, `retry-after`) instead of growing memory; an answer holds
//! its room until it is written; fal's answers are capped at the largest the
//! job can legitimately have.

use std::time::Duration;

use fake_fal::{FakeConfig, Fault, FaultAction, Op};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

const MIB: u64 = 1024 * 1024;

async fn reserved(app: &TestApp) -> f64 {
    series(
        &app.metrics().await,
        "image_gateway_memory_reserved_bytes",
        &[],
    )
    .expect("the memory gauge is exported")
}

/// Poll the gauge until `check` holds (or fail after ~10 s).
async fn wait_reserved(app: &TestApp, what: &str, check: impl Fn(f64) -> bool) -> f64 {
    for _ in 0..200 {
        let r = reserved(app).await;
        if check(r) {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never happened: {what} (reserved {})", reserved(app).await);
}

#[actix_web::test]
async fn jobs_waiting_at_fal_hold_a_small_room_and_their_answers_take_turns() {
    let fake = FakeConfig {
        run_ms: 1_500,
        ..FakeConfig::default()
    };
    // One n=1 b64_json 1024x1024 answer may hold ~12 MiB while it is read
    // (fal's answer, the image): the budget has room for one at a time.
    let app = spawn_app_with_fake(fake, |s| s.limits.max_memory_bytes = 16 * MIB).await;
    let requests: Vec<_> = (0..3)
        .map(|i| {
            app.spawn_generation(json!({
                "prompt": format!("taking turns {i}"), "size": "1024x1024",
                "response_format": "b64_json"
            }))
        })
        .collect();
    // All three reach fal: while their jobs run they hold a small room each,
    // not the ~12 MiB their answers may need.
    eventually("every job was started", || app.fal.count(Op::Submit) == 3).await;
    let waiting = reserved(&app).await;
    assert!(
        waiting > 0.0 && waiting < MIB as f64,
        "jobs at fal hold a small room ({waiting} bytes)"
    );
    // Their answers are read one at a time, each in the room it may need.
    for request in requests {
        let (status, _, answer) = json(request.await.unwrap()).await;
        assert_eq!(status, 200, "{}", short(&answer.to_string()));
        assert_eq!(answer["data"].as_array().unwrap().len(), 1);
    }
    assert_eq!(app.fal.count(Op::Result), 3);
    wait_reserved(&app, "every room is given back", |r| r == 0.0).await;
    assert_eq!(
        series(
            &app.metrics().await,
            "image_gateway_memory_limit_bytes",
            &[]
        ),
        Some((16 * MIB) as f64)
    );
}

#[actix_web::test]
async fn an_answer_holds_its_memory_until_read_and_paid_work_waits_its_turn() {
    // Ten realistic (noisy) 1024x1024 PNGs: ~20 MB of base64, more than
    // the loopback's socket buffers take.
    let fake = FakeConfig {
        full_size_images: true,
        noise: 7,
        ..FakeConfig::default()
    };
    let app = spawn_app_with_fake(fake, |s| s.limits.max_memory_bytes = 128 * MIB).await;
    let body = json!({"prompt": "a slow reader", "n": 10, "size": "1024x1024",
                      "response_format": "b64_json"})
    .to_string();
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut slow = tokio::net::TcpStream::connect(&address).await.unwrap();
    slow.write_all(
        format!(
            "POST /v1/images/generations HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut head = [0u8; 12];
    slow.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");

    // The answer is known: its room is cut to its real size (~20 MB, far
    // below the plan's worst case) and held while the client reads nothing.
    let held = wait_reserved(&app, "the unread answer's room is its size", |r| {
        r > 10.0 * MIB as f64 && r < 40.0 * MIB as f64
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(reserved(&app).await >= held, "still held while unread");
    let results = app.fal.count(Op::Result);

    // Another n=10 is admitted and its jobs run at fal, but its answers
    // (up to ~122 MiB) do not fit beside the unread one: they wait, paid
    // for, without being read.
    let again = app.spawn_generation(json!({
        "prompt": "another slow one", "n": 10, "size": "1024x1024",
        "response_format": "b64_json"
    }));
    eventually("its three jobs were started", || {
        app.fal.count(Op::Submit) == 6
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app.fal.count(Op::Result),
        results,
        "no answer is read before there is room for it"
    );
    // While it waits holding nothing, new work that fits still starts: its
    // job runs, and its answer waits its turn behind the first.
    let third = app.spawn_generation(json!({"prompt": "a third", "response_format": "b64_json"}));
    eventually("the third job was started", || {
        app.fal.count(Op::Submit) == 7
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.fal.count(Op::Result), results, "its answer waits too");

    // The slow client goes away: its answer, and its room, are let go, and
    // the waiting answers are read.
    drop(slow);
    let (status, _, answer) = json(again.await.unwrap()).await;
    assert_eq!(status, 200, "{}", short(&answer.to_string()));
    assert_eq!(answer["data"].as_array().unwrap().len(), 10);
    let (status, _, answer) = json(third.await.unwrap()).await;
    assert_eq!(status, 200, "{}", short(&answer.to_string()));
    wait_reserved(&app, "every room is given back", |r| r == 0.0).await;
    assert_eq!(
        series(&app.metrics().await, "image_gateway_memory_shed_total", &[]),
        Some(0.0),
        "nothing was shed"
    );
}

#[actix_web::test]
async fn generations_past_the_overcommit_are_shed_with_a_429_before_any_job() {
    let fake = FakeConfig {
        run_ms: 1_500,
        ..FakeConfig::default()
    };
    // One n=1 b64_json 1024x1024 answer may need ~12 MiB: with no
    // overcommit the budget promises room to one waiting job at a time.
    let app = spawn_app_with_fake(fake, |s| {
        s.limits.max_memory_bytes = 16 * MIB;
        s.limits.memory_overcommit = 1;
    })
    .await;
    let body =
        json!({"prompt": "one at a time", "size": "1024x1024", "response_format": "b64_json"});
    let first = app.spawn_generation(body.clone());
    eventually("the first job was started", || {
        app.fal.count(Op::Submit) == 1
    })
    .await;

    let res = app
        .post_generation(json!({"prompt": "another", "response_format": "b64_json"}))
        .await;
    let retry_after = res
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let err = expect_error(res, 429).await;
    assert_eq!(err["type"], "rate_limit_error");
    assert_eq!(err["code"], "rate_limit_exceeded");
    assert!(err["message"].as_str().unwrap().contains("memory"), "{err}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert_eq!(
        app.fal.count(Op::Submit),
        1,
        "the shed request cost nothing"
    );
    assert_eq!(
        series(&app.metrics().await, "image_gateway_memory_shed_total", &[]),
        Some(1.0)
    );

    let (status, _, answer) = json(first.await.unwrap()).await;
    assert_eq!(status, 200, "{}", short(&answer.to_string()));
    wait_reserved(&app, "the answer's room is given back", |r| r == 0.0).await;
    let (status, _, _) = json(
        app.post_generation(json!({"prompt": "another", "response_format": "b64_json"}))
            .await,
    )
    .await;
    assert_eq!(status, 200, "room again once the first answer was written");
}

#[actix_web::test]
async fn fal_answers_are_capped_at_the_largest_the_job_can_have() {
    // fal.max_response_bytes is left at its default (64 MiB); a 24 MiB
    // answer for one 1024x1024 image is no legitimate answer.
    let app = spawn_app().await;
    app.fal.inject(Fault {
        op: Op::Result,
        times: 1,
        action: FaultAction::Huge {
            bytes: 24 * 1024 * 1024,
        },
    });
    let res = app
        .post_generation(
            json!({"prompt": "too big", "size": "1024x1024", "response_format": "b64_json"}),
        )
        .await;
    let err = expect_error(res, 502).await;
    assert_eq!(err["code"], "upstream_error");
    assert!(
        err["message"].as_str().unwrap().contains("largest"),
        "{err}"
    );
    // An answer of its legitimate size goes through.
    let (status, _, _) = json(
        app.post_generation(
            json!({"prompt": "fits", "size": "1024x1024", "response_format": "b64_json"}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
}
