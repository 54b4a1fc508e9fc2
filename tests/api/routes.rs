//! The route table: models, probes, unsupported and unknown paths, the
//! offline backend and its file links, client keys.

use image_gateway::config::{BackendChoice, Secret};
use image_gateway::http::routes;
use serde_json::json;

use crate::helpers::*;

#[actix_web::test]
async fn generations_are_served_with_and_without_the_v1_prefix() {
    let app = spawn_app().await;
    for path in ["/v1/images/generations", "/images/generations"] {
        let res = app
            .client
            .post(app.url(path))
            .header("content-type", "application/json")
            .body(json!({"prompt":"both"}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{path}");
    }
}

#[actix_web::test]
async fn models_list_every_id_and_alias_in_openai_shape() {
    let app = spawn_app().await;

    let (status, _, body) = json(app.get("/v1/models").await).await;

    assert_eq!(status, 200);
    assert_eq!(body["object"], "list");
    let ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    for id in [
        "imagen-4-fast",
        "imagen-4",
        "imagen-4-ultra",
        "dall-e-2",
        "dall-e-3",
        "gpt-image-1",
        "gpt-image-1-mini",
        "gpt-image-1.5",
        "gpt-image-2",
    ] {
        assert!(ids.contains(&id), "{id} missing from {ids:?}");
    }
    for m in body["data"].as_array().unwrap() {
        assert_eq!(m["object"], "model");
        assert!(m["created"].is_i64() && m["owned_by"].is_string());
    }

    let (status, _, one) = json(app.get("/v1/models/gpt-image-1.5").await).await;
    assert_eq!(status, 200);
    assert_eq!(one["id"], "gpt-image-1.5");
    assert_eq!(one["alias_of"], "imagen-4-fast");
    assert_eq!(one["endpoint"], "fal-ai/imagen4/preview/fast");

    let err = expect_error(app.get("/v1/models/stable-diffusion-xl").await, 404).await;
    assert_eq!(err["code"], "model_not_found");
}

#[actix_web::test]
async fn unknown_models_in_a_generation_are_404_model_not_found() {
    let app = spawn_app().await;
    let err = expect_error(
        app.post_generation(json!({"prompt":"x","model":"midjourney"}))
            .await,
        404,
    )
    .await;
    assert_eq!(err["code"], "model_not_found");
    assert_eq!(err["param"], "model");
    assert_eq!(app.fal.count(fake_fal::Op::Submit), 0);
}

#[actix_web::test]
async fn edits_and_variations_say_clearly_that_imagen_cannot_edit() {
    let app = spawn_app().await;
    for path in ["/v1/images/edits", "/v1/images/variations", "/images/edits"] {
        let res = app
            .client
            .post(app.url(path))
            .header("content-type", "multipart/form-data; boundary=x")
            .body("--x--\r\n")
            .send()
            .await
            .unwrap();
        let err = expect_error(res, 400).await;
        assert_eq!(err["code"], "unsupported_operation", "{path}");
        assert!(
            err["message"]
                .as_str()
                .unwrap()
                .contains("/v1/images/generations")
        );
    }
}

#[actix_web::test]
async fn unknown_paths_and_methods_are_openai_shaped_404s() {
    let app = spawn_app().await;
    let err = expect_error(app.get("/v1/chat/completions").await, 404).await;
    assert_eq!(err["message"], "Invalid URL (GET /v1/chat/completions)");
    assert_eq!(err["type"], "invalid_request_error");
    let err = expect_error(app.get("/v1/images/generations").await, 404).await;
    assert_eq!(err["message"], "Invalid URL (GET /v1/images/generations)");
}

#[actix_web::test]
async fn probes_report_liveness_and_the_backend() {
    let app = spawn_app().await;
    let (status, _, live) = json(app.get("/healthz").await).await;
    assert_eq!((status, live["status"].as_str()), (200, Some("ok")));
    let (status, _, ready) = json(app.get("/readyz").await).await;
    assert_eq!(status, 200);
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["backend"], "fal");
    assert_eq!(ready["fal_mode"], "queue");
}

#[actix_web::test]
async fn without_a_fal_key_the_local_backend_serves_real_images_at_imagen_sizes() {
    let app = spawn_app_with(|s| {
        s.backend = BackendChoice::Auto;
        s.fal.key = None;
    })
    .await;

    let (_, _, ready) = json(app.get("/readyz").await).await;
    assert_eq!(ready["backend"], "local");
    assert_eq!(ready["offline"], true);

    let (status, headers, body) = json(
        app.post_generation(json!({"prompt":"a lighthouse at dusk","size":"1792x1024","n":2,"response_format":"b64_json"}))
            .await,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-image-gateway-backend"], "local");
    assert_eq!(body["size"], "1408x768");
    let a = body["data"][0]["b64_json"].as_str().unwrap();
    let b = body["data"][1]["b64_json"].as_str().unwrap();
    assert_eq!(decode_image(a), (image::ImageFormat::Png, 1408, 768));
    assert_ne!(a, b, "the two images differ");

    // Deterministic per prompt: a fresh generation gives the same picture.
    let (_, _, again) = json(
        app.post_generation_with(
            json!({"prompt":"a lighthouse at dusk","size":"1792x1024","n":2,"response_format":"b64_json"}),
            &[("cache-control", "no-cache")],
        )
        .await,
    )
    .await;
    assert_eq!(again["data"][0]["b64_json"], body["data"][0]["b64_json"]);
    assert_eq!(
        app.fal.count(fake_fal::Op::Submit),
        0,
        "fal is never called"
    );
}

#[actix_web::test]
async fn links_follow_forwarded_headers_only_when_trusted() {
    let spoofed = [
        ("host", "evil.example"),
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-proto", "https"),
        ("forwarded", "host=evil.example;proto=https"),
    ];
    for trusted in [false, true] {
        let app = spawn_app_with(|s| {
            s.backend = BackendChoice::Local;
            s.fal.key = None;
            s.server.trust_forwarded_headers = trusted;
        })
        .await;
        let (status, _, body) = json(
            app.post_generation_with(json!({"prompt":"where do links point"}), &spoofed)
                .await,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let url = body["data"][0]["url"].as_str().unwrap();
        if trusted {
            assert!(
                url.starts_with("https://evil.example/v1/images/files/"),
                "{url}"
            );
        } else {
            // The address the client connected to, whatever it claims.
            assert!(
                url.starts_with(&format!("{}/v1/images/files/", app.address)),
                "{url}"
            );
        }
    }
}

#[actix_web::test]
async fn local_url_answers_link_to_files_the_gateway_serves() {
    let app = spawn_app_with(|s| {
        s.backend = BackendChoice::Local;
        s.fal.key = None;
    })
    .await;

    let (status, _, body) = json(
        app.post_generation(json!({"prompt":"files","output_format":"jpeg","size":"1024x1792"}))
            .await,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let url = body["data"][0]["url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("{}/v1/images/files/", app.address)),
        "{url}"
    );
    let res = app.client.get(url).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "image/jpeg");
    assert_eq!(res.headers()["x-content-type-options"], "nosniff");
    let bytes = res.bytes().await.unwrap();
    let img = image::load_from_memory(&bytes).unwrap();
    assert_eq!((img.width(), img.height()), (768, 1408));

    let err = expect_error(
        app.get("/v1/images/files/00000000000000000000000000000000.png")
            .await,
        404,
    )
    .await;
    assert!(err["message"].as_str().unwrap().contains("expired"));
}

#[actix_web::test]
async fn public_base_url_is_used_for_file_links() {
    let app = spawn_app_with(|s| {
        s.backend = BackendChoice::Local;
        s.fal.key = None;
        s.server.public_base_url = "https://images.example.com/".into();
    })
    .await;
    let (_, _, body) = json(app.post_generation(json!({"prompt":"public"})).await).await;
    let url = body["data"][0]["url"].as_str().unwrap();
    assert!(
        url.starts_with("https://images.example.com/v1/images/files/"),
        "{url}"
    );
}

#[actix_web::test]
async fn with_keys_configured_only_probes_and_file_links_are_open() {
    let app = spawn_app_with(|s| s.auth.api_keys = vec![Secret::new("sk-good")]).await;

    let err = expect_error(app.post_generation(json!({"prompt":"x"})).await, 401).await;
    assert_eq!(err["type"], "authentication_error");
    assert_eq!(err["code"], "invalid_api_key");
    let err = expect_error(
        app.post_generation_with(json!({"prompt":"x"}), &[("authorization", "Bearer sk-bad")])
            .await,
        401,
    )
    .await;
    assert!(
        !err.to_string().contains("sk-bad"),
        "the key is never echoed"
    );

    let ok = app
        .post_generation_with(
            json!({"prompt":"x"}),
            &[("authorization", "Bearer sk-good")],
        )
        .await;
    assert_eq!(ok.status(), 200);

    for open in ["/healthz", "/readyz"] {
        assert_eq!(app.get(open).await.status(), 200, "{open}");
    }
    for closed in ["/v1/models", "/v1/models/imagen-4", "/metrics", "/v1/nope"] {
        assert_eq!(app.get(closed).await.status(), 401, "{closed}");
    }
}

#[actix_web::test]
async fn auth_is_deny_by_default_on_every_served_route() {
    let app = spawn_app_with(|s| {
        s.auth.api_keys = vec![Secret::new("sk-walk")];
        crate::keys::with_admin(s);
    })
    .await;
    for route in routes::served(true) {
        let (method, path) = (route.method, route.path);
        let concrete = path
            .replace("{name}", "0123456789abcdef0123456789abcdef.png")
            .replace("{model}", "imagen-4")
            .replace("{id}", "key_0");
        let req = |key: Option<&str>| {
            let mut r = app
                .client
                .request(
                    reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                    app.url(&concrete),
                )
                .header("content-type", "application/json")
                .body(json!({"prompt":"walk"}).to_string());
            if let Some(k) = key {
                r = r.bearer_auth(k);
            }
            r.send()
        };
        let anonymous = req(None).await.unwrap().status().as_u16();
        let with_key = req(Some("sk-walk")).await.unwrap().status().as_u16();
        // The table's policy is what the middleware enforces (metrics are
        // not public here, so they need a key like the API).
        if route.access == routes::Access::Admin {
            // The admin API takes the admin key, never a client key.
            let with_admin = req(Some(crate::keys::ADMIN_KEY))
                .await
                .unwrap()
                .status()
                .as_u16();
            assert_eq!(anonymous, 401, "{method} {path} must need the admin key");
            assert_eq!(with_key, 401, "{method} {path} must refuse a client key");
            assert_ne!(with_admin, 401, "{method} {path} must accept the admin key");
        } else if route.access == routes::Access::Open {
            assert_ne!(anonymous, 401, "{method} {path} must be open");
        } else {
            assert_eq!(anonymous, 401, "{method} {path} must need a key");
            assert_ne!(with_key, 401, "{method} {path} must accept the key");
        }
    }
    // Unknown paths are denied too, before their 404.
    assert_eq!(app.get("/v1/unknown").await.status(), 401);
    assert_eq!(app.get("/admin/v1/unknown").await.status(), 401);
}

#[actix_web::test]
async fn metrics_public_opens_only_metrics() {
    let app = spawn_app_with(|s| {
        s.auth.api_keys = vec![Secret::new("sk-m")];
        s.metrics.public = true;
    })
    .await;
    assert_eq!(app.get("/metrics").await.status(), 200);
    assert_eq!(app.get("/v1/models").await.status(), 401);
}

#[actix_web::test]
async fn the_fal_key_never_follows_urls_fal_advertises() {
    use fake_fal::{FakeConfig, FakeFal, Op};
    let elsewhere = FakeFal::start("127.0.0.1:0", FakeConfig::default(), 1).unwrap();
    let app = spawn_app_with_fake(
        FakeConfig {
            advertised_base: elsewhere.queue_url(),
            ..FakeConfig::default()
        },
        |_| {},
    )
    .await;

    let res = app
        .post_generation(json!({"prompt":"stay home","response_format":"b64_json"}))
        .await;

    assert_eq!(res.status(), 200);
    assert!(app.fal.count(Op::Stream) + app.fal.count(Op::Status) >= 1);
    assert_eq!(app.fal.count(Op::Result), 1);
    assert!(
        elsewhere.calls().is_empty(),
        "nothing went to the advertised host: {:?}",
        elsewhere.calls()
    );
}
