//! The connection itself: clients that half-close, stop reading, or speak
//! broken HTTP are handled as HTTP allows, and the gateway's own answers
//! keep OpenAI's shape.

use std::time::Duration;

use fake_fal::FakeConfig;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

fn slow(queue_ms: u64) -> FakeConfig {
    FakeConfig {
        queue_ms,
        ..FakeConfig::default()
    }
}

async fn connect(app: &TestApp) -> tokio::net::TcpStream {
    tokio::net::TcpStream::connect(app.address.trim_start_matches("http://"))
        .await
        .unwrap()
}

fn post(body: &serde_json::Value) -> String {
    let body = body.to_string();
    format!(
        "POST /v1/images/generations HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Everything the server sends until it closes (at most `limit`).
async fn read_all(stream: &mut tokio::net::TcpStream, limit: Duration) -> String {
    let mut out = Vec::new();
    let read = stream.read_to_end(&mut out);
    tokio::time::timeout(limit, read)
        .await
        .expect("the server answered and closed in time")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// The final answer, past any interim 1xx answers.
fn final_answer(text: &str) -> &str {
    let mut rest = text;
    while rest.starts_with("HTTP/1.1 1") {
        let end = rest.find("\r\n\r\n").unwrap();
        rest = &rest[end + 4..];
    }
    rest
}

#[actix_web::test]
async fn a_client_that_half_closes_after_its_request_still_gets_its_answer() {
    let app = spawn_app_with_fake(slow(600), |_| {}).await;
    for body in [
        json!({"prompt":"half closed"}),
        json!({"prompt":"half closed stream","stream":true}),
    ] {
        let mut stream = connect(&app).await;
        stream.write_all(post(&body).as_bytes()).await.unwrap();
        // Done sending; still reading.
        stream.shutdown().await.unwrap();

        let text = read_all(&mut stream, Duration::from_secs(10)).await;

        let answer = final_answer(&text);
        assert!(answer.starts_with("HTTP/1.1 200"), "{}", short(&text));
        if body["stream"] == true {
            assert!(
                answer.contains("image_generation.completed"),
                "{}",
                short(answer)
            );
        } else {
            assert!(answer.contains("\"data\":[{\"url\""), "{}", short(answer));
        }
    }
    assert_eq!(app.fal.cancelled_jobs(), 0);
    let m = app.metrics().await;
    assert_eq!(
        series(&m, "image_gateway_client_disconnects_total", &[]),
        Some(0.0)
    );
}

#[actix_web::test]
async fn a_client_that_really_hangs_up_still_cancels_its_fal_job() {
    let app = spawn_app_with_fake(slow(5_000), |_| {}).await;
    let mut stream = connect(&app).await;
    stream
        .write_all(post(&json!({"prompt":"gone for good"})).as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    drop(stream);

    eventually("the fal job is cancelled", || app.fal.cancelled_jobs() == 1).await;
}
