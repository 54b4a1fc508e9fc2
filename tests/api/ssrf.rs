//! Image links in fal's answers are not trusted: the gateway downloads them
//! only from `fal.download_hosts`, never from loopback, private or
//! link-local addresses (after DNS), never through a redirect, and only
//! when what arrives is an image of the asked format.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use fake_fal::{Fault, FaultAction, Op};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

/// A loopback HTTP server answering every request with `response` (a whole
/// HTTP/1.1 answer) and counting the requests it got: a stand-in for a
/// metadata service or any internal endpoint a link could point at.
async fn lure(response: Vec<u8>) -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let response = Arc::new(response);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let response = response.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let _ = socket.read(&mut buf).await;
                let _ = socket.write_all(&response).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    (port, hits)
}

fn answer(status: &str, content_type: &str, body: &[u8], extra: &str) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n{extra}connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

fn png() -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_pixel(8, 8, image::Rgb([200, 30, 30]))
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

/// fal's result answer linking to `urls` instead of inlining the images.
fn link_answer(app: &TestApp, urls: &[String]) {
    let images: Vec<_> = urls
        .iter()
        .map(|u| json!({"url": u, "content_type": "image/png", "width": 1024, "height": 1024}))
        .collect();
    app.fal.inject(Fault {
        op: Op::Result,
        times: 1,
        action: FaultAction::Respond {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: json!({"images": images, "description": ""}).to_string(),
        },
    });
}

async fn b64_request(app: &TestApp, n: u8) -> reqwest::Response {
    app.post_generation(json!({"prompt":"ssrf","n":n,"response_format":"b64_json"}))
        .await
}

#[actix_web::test]
async fn links_to_loopback_services_and_the_gateway_itself_are_never_fetched() {
    let app = spawn_app_with(|s| {
        s.fal.download_hosts = vec!["fal.media".into()];
        s.fal.download_private_networks = false;
    })
    .await;
    let (port, hits) = lure(answer("200 OK", "image/png", &png(), "")).await;
    let metrics_before = app.metrics().await;

    for url in [
        format!("http://127.0.0.1:{port}/latest/meta-data/iam/security-credentials/"),
        format!("http://2130706433:{port}/x.png"),
        format!("http://[::ffff:127.0.0.1]:{port}/x.png"),
        format!("{}/metrics", app.address),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
    ] {
        link_answer(&app, std::slice::from_ref(&url));
        let err = expect_error(b64_request(&app, 1).await, 502).await;
        assert_eq!(err["code"], "upstream_error", "{url}: {err}");
        assert!(
            !err["message"].as_str().unwrap().contains("127.0.0.1"),
            "the link is not echoed: {err}"
        );
    }

    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "no request reached the lure"
    );
    // The only /metrics scrapes are the test's own.
    let scrapes = |text: &str| {
        series(
            text,
            "image_gateway_http_requests_total",
            &[("route", "/metrics"), ("method", "GET"), ("status", "200")],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(
        scrapes(&app.metrics().await),
        scrapes(&metrics_before) + 1.0
    );
}

#[actix_web::test]
async fn an_allowed_name_that_resolves_to_a_private_address_is_refused() {
    // `localhost` is on the list, but it resolves to loopback.
    let app = spawn_app_with(|s| {
        s.fal.download_hosts = vec!["localhost".into()];
        s.fal.download_private_networks = false;
    })
    .await;
    let (port, hits) = lure(answer("200 OK", "image/png", &png(), "")).await;

    link_answer(&app, &[format!("http://localhost:{port}/x.png")]);
    let err = expect_error(b64_request(&app, 1).await, 502).await;

    assert_eq!(err["code"], "upstream_error");
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}

#[actix_web::test]
async fn hosts_off_the_list_are_refused_even_when_private_networks_are_allowed() {
    let app = spawn_app_with(|s| {
        s.fal.download_hosts = vec!["fal.media".into()];
        s.fal.download_private_networks = true;
    })
    .await;
    let (port, hits) = lure(answer("200 OK", "image/png", &png(), "")).await;

    link_answer(&app, &[format!("http://127.0.0.1:{port}/x.png")]);
    expect_error(b64_request(&app, 1).await, 502).await;

    assert_eq!(hits.load(Ordering::SeqCst), 0);
}

#[actix_web::test]
async fn redirects_are_not_followed() {
    let app = spawn_app().await;
    let (target, target_hits) = lure(answer("200 OK", "image/png", &png(), "")).await;
    let (port, hits) = lure(answer(
        "302 Found",
        "text/plain",
        b"",
        &format!("location: http://127.0.0.1:{target}/x.png\r\n"),
    ))
    .await;

    link_answer(&app, &[format!("http://127.0.0.1:{port}/x.png")]);
    let err = expect_error(b64_request(&app, 1).await, 502).await;

    assert!(err["message"].as_str().unwrap().contains("302"), "{err}");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert_eq!(target_hits.load(Ordering::SeqCst), 0);
}

#[actix_web::test]
async fn only_an_image_of_the_asked_format_is_accepted() {
    let app = spawn_app().await;
    let metrics_text = b"# HELP image_gateway_build_info x\nimage_gateway_build_info 1\n";
    let cases = [
        answer("200 OK", "text/plain; version=0.0.4", metrics_text, ""),
        // Bytes that are not an image, whatever the label says.
        answer("200 OK", "image/png", metrics_text, ""),
        // A real image, but not the PNG the request asked for.
        answer("200 OK", "image/webp", &png(), ""),
    ];
    for response in cases {
        let (port, hits) = lure(response).await;
        link_answer(&app, &[format!("http://127.0.0.1:{port}/x.png")]);
        let err = expect_error(b64_request(&app, 1).await, 502).await;
        assert_eq!(err["code"], "upstream_error");
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }

    // The same route serving a PNG works: the refusals above are the checks.
    let (port, _) = lure(answer("200 OK", "image/png", &png(), "")).await;
    link_answer(&app, &[format!("http://127.0.0.1:{port}/x.png")]);
    let (status, _, body) = json(b64_request(&app, 1).await).await;
    assert_eq!(status, 200, "{body}");
    let (format, w, h) = decode_image(body["data"][0]["b64_json"].as_str().unwrap());
    assert_eq!((format, w, h), (image::ImageFormat::Png, 8, 8));
}
