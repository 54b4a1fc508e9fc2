//! Hostile and broken input: every case is a 400/408/413 in OpenAI's shape
//! (with `param` where one applies), never a 500, a panic or a hang, and
//! the gateway keeps serving afterwards.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use fake_fal::Op;
use serde_json::json;

use crate::helpers::*;

async fn post_raw(app: &TestApp, content_type: Option<&str>, body: Vec<u8>) -> reqwest::Response {
    let mut req = app
        .client
        .post(app.url("/v1/images/generations"))
        .body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    req.send().await.unwrap()
}

#[actix_web::test]
async fn malformed_bodies_are_400s_without_a_crash() {
    let app = spawn_app().await;
    let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_object = format!(
        "{{\"prompt\":\"x\",\"extra\":{}1{}}}",
        "{\"a\":".repeat(5_000),
        "}".repeat(5_000)
    );
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("whitespace", b"  \n ".to_vec()),
        ("truncated", br#"{"prompt": "a"#.to_vec()),
        ("trailing comma", br#"{"prompt": "a",}"#.to_vec()),
        ("array", br#"["prompt"]"#.to_vec()),
        ("string", br#""a lighthouse""#.to_vec()),
        ("null", b"null".to_vec()),
        (
            "invalid utf-8",
            vec![b'{', b'"', b'p', 0xff, 0xfe, b'"', b':', b'1', b'}'],
        ),
        ("binary", (0u8..=255).collect()),
        ("deep array", deep.into_bytes()),
        ("deep object", deep_object.into_bytes()),
        ("huge exponent", br#"{"prompt":"x","n":1e400}"#.to_vec()),
        ("nan literal", br#"{"prompt":"x","n":NaN}"#.to_vec()),
    ];
    for (name, body) in cases {
        let err = expect_error(post_raw(&app, Some("application/json"), body).await, 400).await;
        assert_eq!(err["type"], "invalid_request_error", "{name}");
    }
    assert_eq!(app.fal.count(Op::Submit), 0);
    assert_eq!(app.get("/healthz").await.status(), 200);
}

#[actix_web::test]
async fn bad_fields_are_400s_naming_the_param() {
    let app = spawn_app().await;
    let cases = [
        (json!({}), "prompt"),
        (json!({"prompt": null}), "prompt"),
        (json!({"prompt": ""}), "prompt"),
        (json!({"prompt": 42}), "prompt"),
        (json!({"prompt": ["a"]}), "prompt"),
        (json!({"prompt":"x","n":0}), "n"),
        (json!({"prompt":"x","n":11}), "n"),
        (json!({"prompt":"x","n":-3}), "n"),
        (json!({"prompt":"x","n":"2"}), "n"),
        (json!({"prompt":"x","n":1.5}), "n"),
        (json!({"prompt":"x","n":99_999_999_999_999_999_999.0}), "n"),
        (json!({"prompt":"x","n":u64::MAX}), "n"),
        (json!({"prompt":"x","size":"0x0"}), "size"),
        (json!({"prompt":"x","size":"99999x1"}), "size"),
        (json!({"prompt":"x","size":"-5x10"}), "size"),
        (json!({"prompt":"x","size":"NaNxNaN"}), "size"),
        (json!({"prompt":"x","size":"1024x1024; DROP TABLE"}), "size"),
        (json!({"prompt":"x","size":12}), "size"),
        (
            json!({"prompt":"x","response_format":"png"}),
            "response_format",
        ),
        (json!({"prompt":"x","output_format":"gif"}), "output_format"),
        (
            json!({"prompt":"x","output_compression":-1}),
            "output_compression",
        ),
        (json!({"prompt":"x","quality":"ultra"}), "quality"),
        (json!({"prompt":"x","style":{"a":1}}), "style"),
        (
            json!({"prompt":"x","background":"transparent"}),
            "background",
        ),
        (json!({"prompt":"x","moderation":"off"}), "moderation"),
        (json!({"prompt":"x","stream":"true"}), "stream"),
        (json!({"prompt":"x","partial_images":9}), "partial_images"),
        (json!({"prompt":"x","seed":-1}), "seed"),
        (json!({"prompt":"x","user":5}), "user"),
    ];
    for (body, param) in cases {
        let err = expect_error(app.post_generation(body.clone()).await, 400).await;
        assert_eq!(err["param"], param, "{body}");
        assert_eq!(err["type"], "invalid_request_error", "{body}");
    }
    assert_eq!(app.fal.count(Op::Submit), 0);
}

#[actix_web::test]
async fn wrong_content_types_are_refused_clearly() {
    let app = spawn_app().await;
    for ct in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
    ] {
        let err = expect_error(
            post_raw(&app, Some(ct), br#"{"prompt":"x"}"#.to_vec()).await,
            400,
        )
        .await;
        assert!(
            err["message"]
                .as_str()
                .unwrap()
                .contains("application/json"),
            "{ct}"
        );
    }
    // A missing content type, or a JSON one with parameters, is read as JSON.
    assert_eq!(
        post_raw(&app, None, br#"{"prompt":"x"}"#.to_vec())
            .await
            .status(),
        200
    );
    assert_eq!(
        post_raw(
            &app,
            Some("application/json; charset=utf-8"),
            br#"{"prompt":"x"}"#.to_vec()
        )
        .await
        .status(),
        200
    );
}

#[actix_web::test]
async fn oversized_bodies_and_prompts_are_refused() {
    let app = spawn_app_with(|s| {
        s.server.max_body_bytes = 64 * 1024;
        s.server.max_prompt_chars = 1000;
    })
    .await;

    let big = json!({"prompt": "x".repeat(100 * 1024)})
        .to_string()
        .into_bytes();
    let err = expect_error(
        post_raw(&app, Some("application/json"), big.clone()).await,
        413,
    )
    .await;
    assert_eq!(err["code"], "request_too_large");
    // Without a Content-Length (chunked), the limit holds while reading.
    let chunks = futures_util::stream::iter(
        big.chunks(8192)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let res = app
        .client
        .post(app.url("/v1/images/generations"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(expect_error(res, 413).await["code"], "request_too_large");

    let err = expect_error(
        app.post_generation(json!({"prompt": "é".repeat(1001)}))
            .await,
        400,
    )
    .await;
    assert_eq!(err["param"], "prompt");
    assert!(err["message"].as_str().unwrap().contains("1001"));
    assert_eq!(
        app.post_generation(json!({"prompt": "é".repeat(1000)}))
            .await
            .status(),
        200
    );
}

fn raw_connection(app: &TestApp) -> TcpStream {
    let addr = app.address.trim_start_matches("http://");
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
}

/// Read until the server closes; returns what it sent and how long it took.
fn read_to_close(mut stream: TcpStream) -> (String, Duration) {
    let started = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                panic!(
                    "the server kept a slow client open for 5 s: {}",
                    String::from_utf8_lossy(&out)
                )
            }
            Err(_) => break,
        }
    }
    (
        String::from_utf8_lossy(&out).into_owned(),
        started.elapsed(),
    )
}

#[actix_web::test]
async fn a_slowloris_request_head_is_cut_off() {
    let app = spawn_app_with(|s| s.server.client_header_timeout_ms = 1000).await;

    let (sent, elapsed) = tokio::task::spawn_blocking({
        let mut stream = raw_connection(&app);
        move || {
            stream
                .write_all(b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            // ...and never finish the head.
            read_to_close(stream)
        }
    })
    .await
    .unwrap();

    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
    assert!(
        sent.is_empty() || sent.starts_with("HTTP/1.1 408"),
        "{sent}"
    );
    assert_eq!(app.get("/healthz").await.status(), 200);
}

#[actix_web::test]
async fn a_trickled_body_is_cut_off_with_an_openai_408() {
    let app = spawn_app_with(|s| s.server.client_body_timeout_ms = 400).await;

    let (sent, elapsed) = tokio::task::spawn_blocking({
        let mut stream = raw_connection(&app);
        move || {
            stream
                .write_all(b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{")
                .unwrap();
            let writer = stream.try_clone().unwrap();
            std::thread::spawn(move || {
                let mut writer = writer;
                for _ in 0..30 {
                    std::thread::sleep(Duration::from_millis(100));
                    if writer.write_all(b" ").is_err() {
                        break;
                    }
                }
            });
            read_to_close(stream)
        }
    })
    .await
    .unwrap();

    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    assert!(sent.starts_with("HTTP/1.1 408"), "{sent}");
    assert!(sent.contains("\"code\":\"request_timeout\""), "{sent}");
    assert!(
        sent.to_ascii_lowercase().contains("x-request-id:"),
        "{sent}"
    );
}
