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

/// Everything the server sends until it closes or resets the connection
/// (within `limit`).
async fn read_all(stream: &mut tokio::net::TcpStream, limit: Duration) -> String {
    let mut out = Vec::new();
    let read = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(limit, read)
        .await
        .expect("the server answered and closed in time");
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
    // At once (before the gateway starts watching a waiting client's
    // socket, 100 ms into the wait) and later; an answer and a stream.
    let cases = [
        (json!({"prompt":"gone at once"}), 0),
        (json!({"prompt":"gone at once, stream","stream":true}), 0),
        (json!({"prompt":"gone for good"}), 200),
    ];
    for (i, (body, after_ms)) in cases.into_iter().enumerate() {
        let mut stream = connect(&app).await;
        stream.write_all(post(&body).as_bytes()).await.unwrap();
        eventually("the fal job is submitted", || {
            app.fal.count(fake_fal::Op::Submit) == i as u64 + 1
        })
        .await;
        tokio::time::sleep(Duration::from_millis(after_ms)).await;

        drop(stream);

        eventually("the fal job is cancelled", || {
            app.fal.cancelled_jobs() == i + 1
        })
        .await;
    }
}

#[actix_web::test]
async fn the_servers_own_protocol_errors_have_openai_bodies_and_request_ids() {
    let app = spawn_app_with(|s| s.server.client_header_timeout_ms = 1_000).await;
    let huge_header = format!(
        "GET /healthz HTTP/1.1\r\nhost: gw\r\nx-filler: {}\r\n\r\n",
        "a".repeat(200 * 1024)
    );
    let cases: [(&[u8], u16, &str); 3] = [
        (b"NOT HTTP AT ALL\r\n\r\n", 400, "invalid_http_request"),
        (
            huge_header.as_bytes(),
            431,
            "request_header_fields_too_large",
        ),
        // A head that never finishes.
        (
            b"POST /v1/images/generations HTTP/1.1\r\nhost: gw\r\n",
            408,
            "request_timeout",
        ),
    ];
    for (sent, status, code) in cases {
        let mut stream = connect(&app).await;
        // The server may answer and close before taking all of a huge head.
        let _ = stream.write_all(sent).await;

        let text = read_all(&mut stream, Duration::from_secs(10)).await;

        assert!(
            text.starts_with(&format!("HTTP/1.1 {status} ")),
            "{}",
            short(&text)
        );
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let head = head.to_ascii_lowercase();
        assert!(head.contains("\r\nx-request-id: req_"), "{head}");
        assert!(
            head.contains("\r\ncontent-type: application/json"),
            "{head}"
        );
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["code"], code, "{body}");
        assert_eq!(json["error"]["type"], "invalid_request_error");
        assert!(json["error"]["message"].as_str().unwrap().len() > 10);
    }
}

#[actix_web::test]
async fn a_client_that_stops_reading_is_cut_off_after_the_write_timeout() {
    let fake = FakeConfig {
        noise: 7,
        ..FakeConfig::default()
    };
    let app = spawn_app_with_fake(fake, |s| s.server.client_write_timeout_seconds = 1).await;
    // A few MB of base64 the client never reads, through a small window.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket
        .connect(app.address.trim_start_matches("http://").parse().unwrap())
        .await
        .unwrap();
    let body = json!({"prompt":"never read","n":4,"response_format":"b64_json"});
    stream.write_all(post(&body).as_bytes()).await.unwrap();

    let mut cut = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let m = app.metrics().await;
        if series(&m, "image_gateway_client_write_timeouts_total", &[]) == Some(1.0) {
            cut = true;
            break;
        }
    }
    assert!(
        cut,
        "the stalled connection was closed by the write timeout"
    );
    // The client, reading at last, finds the answer cut short.
    let text = read_all(&mut stream, Duration::from_secs(10)).await;
    assert!(text.starts_with("HTTP/1.1 200"));
    assert!(text.len() < 4 * 1_000_000, "{} bytes arrived", text.len());
}

/// Whether a 200 arrives on `stream` within 700 ms (`Err` when nothing does).
async fn answered(stream: &mut tokio::net::TcpStream) -> Result<bool, tokio::time::error::Elapsed> {
    let read = async {
        let mut buf = [0u8; 512];
        let n = stream.read(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200")
    };
    tokio::time::timeout(Duration::from_millis(700), read).await
}

#[actix_web::test]
async fn connections_past_the_cap_wait_until_one_closes() {
    let app = spawn_app_with(|s| {
        s.server.workers = 1;
        s.server.max_connections = 2;
    })
    .await;
    let probe = b"GET /healthz HTTP/1.1\r\nhost: gw\r\n\r\n";
    let mut first = connect(&app).await;
    let mut second = connect(&app).await;
    for stream in [&mut first, &mut second] {
        stream.write_all(probe).await.unwrap();
        assert_eq!(answered(stream).await, Ok(true));
    }

    let mut third = connect(&app).await;
    third.write_all(probe).await.unwrap();
    assert!(
        answered(&mut third).await.is_err(),
        "a third connection is not served while two are open"
    );

    drop(first);
    assert_eq!(
        answered(&mut third).await,
        Ok(true),
        "served once one closed"
    );
}
