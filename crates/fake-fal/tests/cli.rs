#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The `fake-fal` binary as the scripts and the SDK suites run it: the
//! `listening on <port>` line they wait for, and flags that take effect.
//!
//! Also what makes `cargo test --workspace` build the binary (cargo builds a
//! package's binaries for its integration tests only), which the gateway's
//! tests/alloc.rs runs.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

struct Fake(Child, u16);

impl Fake {
    fn start(flags: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fake-fal"))
            .args(["--listen", "127.0.0.1:0"])
            .args(flags)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .strip_prefix("listening on ")
            .and_then(|p| p.trim_end().parse().ok())
            .unwrap_or_else(|| panic!("first line {line:?}"));
        Fake(child, port)
    }

    /// One HTTP/1.1 exchange: (status, body).
    fn http(&self, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.1)).unwrap();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nhost: fake\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, serde_json::from_str(body).unwrap_or_default())
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_binary_announces_its_port_and_honours_its_flags() {
    let fake = Fake::start(&["--small-images", "--no-record", "--workers", "1"]);
    let (status, out) = fake.http(
        "POST",
        "/run/fal-ai/imagen4/preview/fast",
        r#"{"prompt":"a lighthouse","aspect_ratio":"16:9","output_format":"jpeg"}"#,
    );
    assert_eq!(status, 200, "{out}");
    let image = &out["images"][0];
    // --small-images: 1/16 of Imagen's 1408x768 on each side.
    assert_eq!(
        (image["width"].as_u64(), image["height"].as_u64()),
        (Some(88), Some(48))
    );
    assert_eq!(image["content_type"], "image/jpeg");
    // --no-record: counted, not kept.
    assert_eq!(fake.http("GET", "/_fake/counts", "").1["run"], 1);
    assert_eq!(
        fake.http("GET", "/_fake/calls", "").1,
        serde_json::json!([])
    );
}

#[test]
fn queue_timing_flags_shape_the_status_answers() {
    let fake = Fake::start(&["--queue-ms", "60000", "--small-images"]);
    let (status, submitted) = fake.http(
        "POST",
        "/fal-ai/imagen4/preview/fast",
        r#"{"prompt":"a lighthouse"}"#,
    );
    assert_eq!(status, 200, "{submitted}");
    let id = submitted["request_id"].as_str().unwrap();
    let (status, body) = fake.http("GET", &format!("/fal-ai/imagen4/requests/{id}/status"), "");
    assert_eq!((status, body["status"].as_str()), (202, Some("IN_QUEUE")));
    let calls = fake.http("GET", "/_fake/calls", "").1;
    assert_eq!(calls[0]["body"]["prompt"], "a lighthouse");
}

/// Reads a status stream into `seen` until `want` appears in it (or the
/// stream ends; silence for 30 s fails).
fn read_stream_until(stream: &mut TcpStream, seen: &mut String, want: &str) {
    let mut buf = [0u8; 4096];
    while !seen.contains(want) {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(e) => panic!("status stream: {e} before {want:?}; read so far: {seen:?}"),
        }
    }
}

/// Submit a job with `prompt`; its request id.
fn submit(fake: &Fake, prompt: &str) -> String {
    let body = serde_json::json!({ "prompt": prompt }).to_string();
    fake.http("POST", "/fal-ai/imagen4/preview/fast", &body).1["request_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn open_stream(fake: &Fake, id: &str) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", fake.1)).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET /fal-ai/imagen4/requests/{id}/status/stream HTTP/1.1\r\nhost: fake\r\n\
         connection: close\r\n\r\n"
    )
    .unwrap();
    stream
}

#[test]
fn status_streams_follow_the_clock_and_see_a_cancel_at_once() {
    // Each status as the clock reaches it, in order, then the end.
    let fake = Fake::start(&["--queue-ms", "200", "--run-ms", "200", "--small-images"]);
    let id = submit(&fake, "a");
    let mut stream = open_stream(&fake, &id);
    let mut seen = String::new();
    stream.read_to_string(&mut seen).unwrap();
    let at = |s: &str| seen.find(s).unwrap_or_else(|| panic!("no {s} in {seen:?}"));
    assert!(at("IN_QUEUE") < at("IN_PROGRESS") && at("IN_PROGRESS") < at("COMPLETED"));
    drop(fake);

    // A job that would run for ten minutes: its stream reports the cancel
    // when it happens, not when the job would have ended.
    let fake = Fake::start(&["--run-ms", "600000", "--small-images"]);
    let id = submit(&fake, "b");
    let mut stream = open_stream(&fake, &id);
    let mut seen = String::new();
    read_stream_until(&mut stream, &mut seen, "IN_PROGRESS");
    let (status, body) = fake.http("PUT", &format!("/fal-ai/imagen4/requests/{id}/cancel"), "");
    assert_eq!(
        (status, body["status"].as_str()),
        (202, Some("CANCELLATION_REQUESTED"))
    );
    read_stream_until(&mut stream, &mut seen, "client_cancelled");
    assert!(seen.contains("COMPLETED"), "{seen}");
}
