//! The binary as operators run it (Kubernetes, systemd, Ctrl-C): it must
//! stop when asked.

// Test code: a failed expectation is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn stops_promptly_on(signal: &str) {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_image-gateway"))
        .env("IMAGE_GATEWAY__SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env("IMAGE_GATEWAY__BACKEND", "local")
        .env("IMAGE_GATEWAY__LOG__LEVEL", "error")
        .env_remove("FAL_KEY")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the binary starts");
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the gateway never listened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let sent = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status()
        .expect("kill runs");
    assert!(sent.success());

    // Nothing is in flight, so the shutdown grace period does not apply.
    let asked = Instant::now();
    let exited = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if asked.elapsed() > Duration::from_secs(10) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if exited.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let status = exited
        .unwrap_or_else(|| panic!("still running 10 s after SIG{signal} with nothing in flight"));
    assert!(status.success(), "exit status after SIG{signal}: {status}");
}

#[test]
fn the_binary_exits_promptly_on_sigterm() {
    stops_promptly_on("TERM");
}

#[test]
fn the_binary_exits_promptly_on_sigint() {
    stops_promptly_on("INT");
}
