//! Keys in the database: the admin API (and its gate), the `keys` commands,
//! database keys on the hot path (revoked, expired, limited to models), and
//! replicas sharing PostgreSQL seeing a revocation at once.

use std::process::Command;
use std::time::Duration;

use image_gateway::config::{DatabaseUrl, Secret, Settings};
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::postgres::{PG_PASSWORD, PostgresServer, within};

pub const ADMIN_KEY: &str = "admin-SECRET-0123456789abcdef";

/// Settings with the admin API on.
pub fn with_admin(s: &mut Settings) {
    s.auth.admin_key = Some(Secret::new(ADMIN_KEY));
}

impl TestApp {
    /// An admin API call with the admin key: status and JSON body.
    pub async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .client
            .request(method, self.url(path))
            .bearer_auth(ADMIN_KEY);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let (status, _, body) = json(req.send().await.expect("admin call")).await;
        (status, body)
    }

    /// Make a key through the admin API: (id, secret).
    pub async fn make_key(&self, body: Value) -> (String, String) {
        let (status, key) = self.admin(Method::POST, "/admin/v1/keys", Some(body)).await;
        assert_eq!(status, 201, "{key}");
        (
            key["id"].as_str().unwrap().to_owned(),
            key["key"].as_str().unwrap().to_owned(),
        )
    }

    pub async fn generate_as(&self, key: &str, body: Value) -> reqwest::Response {
        self.post_generation_with(body, &[("authorization", &format!("Bearer {key}"))])
            .await
    }
}

#[actix_web::test]
async fn without_an_admin_key_the_admin_api_is_an_unknown_path() {
    let app = spawn_app().await;
    for (method, path) in [
        (Method::GET, "/admin/v1/keys"),
        (Method::POST, "/admin/v1/keys"),
        (Method::GET, "/admin/v1/spend"),
        (Method::DELETE, "/admin/v1/keys/key_1"),
    ] {
        let res = app
            .client
            .request(method.clone(), app.url(path))
            .bearer_auth("anything-at-all-0123456789")
            .send()
            .await
            .unwrap();
        let err = expect_error(res, 404).await;
        assert_eq!(err["message"], format!("Invalid URL ({method} {path})"));
    }
}

#[actix_web::test]
async fn the_admin_api_takes_the_admin_key_and_nothing_else() {
    let app = spawn_app_with(|s| {
        with_admin(s);
        s.auth.api_keys = vec![Secret::new("sk-client-key")];
    })
    .await;
    let call = |auth: Option<&'static str>| {
        let mut req = app.client.get(app.url("/admin/v1/keys"));
        if let Some(a) = auth {
            req = req.bearer_auth(a);
        }
        req.send()
    };
    for auth in [
        None,
        Some("sk-client-key"),
        Some("admin-SECRET-0123456789abcdeX"),
    ] {
        let err = expect_error(call(auth).await.unwrap(), 401).await;
        assert_eq!(err["type"], "authentication_error");
        assert!(!err.to_string().contains("admin-SECRET"), "{err}");
    }
    assert_eq!(call(Some(ADMIN_KEY)).await.unwrap().status(), 200);
    // The admin key is not a client key.
    let res = app.generate_as(ADMIN_KEY, json!({"prompt": "x"})).await;
    expect_error(res, 401).await;
    // Unknown admin paths are refused before their 404.
    let res = app
        .client
        .get(app.url("/admin/v1/nope"))
        .send()
        .await
        .unwrap();
    expect_error(res, 401).await;
    let res = app
        .client
        .get(app.url("/admin/v1/nope"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    expect_error(res, 404).await;
}

#[actix_web::test]
async fn keys_are_made_listed_edited_and_revoked_and_the_secret_is_shown_once() {
    let app = spawn_app_with(with_admin).await;

    let (status, made) = app
        .admin(
            Method::POST,
            "/admin/v1/keys",
            Some(json!({
                "name": "ci",
                "models": ["imagen-4-fast", "dall-e-3"],
                "budget_usd": 5,
                "budget_period": "day",
                "requests_per_minute": 60,
                "expires_at": "2099-01-01T00:00:00Z",
            })),
        )
        .await;
    assert_eq!(status, 201, "{made}");
    let id = made["id"].as_str().unwrap().to_owned();
    let secret = made["key"].as_str().unwrap().to_owned();
    assert!(id.starts_with("key_"), "{id}");
    assert!(secret.starts_with("sk-") && secret.len() > 40, "{secret}");
    assert_eq!(made["key_prefix"], secret[..7]);
    assert_eq!(made["models"], json!(["imagen-4-fast"]));
    assert_eq!(made["budget_usd"], 5.0);
    assert_eq!(made["budget_period"], "day");
    assert_eq!(made["spend_usd"], 0.0);
    assert_eq!(made["status"], "active");
    assert_eq!(made["requests_per_minute"], 60);
    assert_eq!(made["images_per_minute"], Value::Null);
    assert_eq!(made["expires_at"], "2099-01-01T00:00:00Z");

    let (status, list) = app.admin(Method::GET, "/admin/v1/keys", None).await;
    assert_eq!(status, 200);
    assert_eq!(list["object"], "list");
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert!(
        !list.to_string().contains(&secret),
        "the secret is shown once"
    );
    assert!(list["data"][0].get("key").is_none());

    let (status, one) = app
        .admin(Method::GET, &format!("/admin/v1/keys/{id}"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(one["id"], id.as_str());
    assert_eq!(one["spend_usd"], 0.0);
    assert!(!one.to_string().contains(&secret));

    let (status, edited) = app
        .admin(
            Method::PATCH,
            &format!("/admin/v1/keys/{id}"),
            Some(json!({"name": "ci-2", "budget_usd": null, "models": null})),
        )
        .await;
    assert_eq!(status, 200, "{edited}");
    assert_eq!(edited["name"], "ci-2");
    assert_eq!(edited["budget_usd"], Value::Null);
    assert_eq!(edited["models"], Value::Null);
    assert_eq!(edited["requests_per_minute"], 60, "untouched fields stay");

    let (status, revoked) = app
        .admin(Method::DELETE, &format!("/admin/v1/keys/{id}"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(revoked["status"], "revoked");
    assert!(revoked["revoked_at"].is_string());
    // Revoking again changes nothing.
    let (status, again) = app
        .admin(Method::DELETE, &format!("/admin/v1/keys/{id}"), None)
        .await;
    assert_eq!(
        (status, &again["revoked_at"]),
        (200, &revoked["revoked_at"])
    );

    for method in [Method::GET, Method::PATCH, Method::DELETE] {
        let (status, err) = app
            .admin(method, "/admin/v1/keys/key_missing", Some(json!({})))
            .await;
        assert_eq!(status, 404, "{err}");
    }
    let (status, err) = app
        .admin(
            Method::POST,
            "/admin/v1/keys",
            Some(json!({"name": "x", "budget_usd": -1})),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(err["error"]["param"], "budget_usd");
}

#[actix_web::test]
async fn database_keys_close_the_gateway_and_are_refused_once_revoked_or_expired() {
    let app = spawn_app_with(with_admin).await;
    // No keys anywhere: open, as before.
    assert_eq!(
        app.post_generation(json!({"prompt": "open"}))
            .await
            .status(),
        200
    );

    let (id, secret) = app.make_key(json!({"name": "a"})).await;
    // A key exists: anonymous callers are refused from now on.
    expect_error(app.post_generation(json!({"prompt": "open"})).await, 401).await;
    let res = app
        .generate_as(&secret, json!({"prompt": "with a key"}))
        .await;
    assert_eq!(res.status(), 200);
    let res = app
        .generate_as("sk-not-a-key", json!({"prompt": "x"}))
        .await;
    expect_error(res, 401).await;

    app.admin(Method::DELETE, &format!("/admin/v1/keys/{id}"), None)
        .await;
    let err = expect_error(app.generate_as(&secret, json!({"prompt": "x"})).await, 401).await;
    assert!(
        err["message"].as_str().unwrap().contains("revoked"),
        "{err}"
    );
    // Revoking the last key does not open the gateway again.
    expect_error(app.post_generation(json!({"prompt": "open"})).await, 401).await;

    // A key that expires two seconds from now works until then.
    let soon = time::OffsetDateTime::now_utc() + time::Duration::seconds(2);
    let soon = soon
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let (_, secret) = app
        .make_key(json!({"name": "soon", "expires_at": soon}))
        .await;
    assert_eq!(
        app.generate_as(&secret, json!({"prompt": "before"}))
            .await
            .status(),
        200
    );
    tokio::time::sleep(Duration::from_millis(3_100)).await;
    let err = expect_error(
        app.generate_as(&secret, json!({"prompt": "after"})).await,
        401,
    )
    .await;
    assert!(
        err["message"].as_str().unwrap().contains("expired"),
        "{err}"
    );
}

#[actix_web::test]
async fn a_key_limited_to_some_models_gets_403_for_the_others() {
    let app = spawn_app_with(with_admin).await;
    let (_, secret) = app
        .make_key(json!({"name": "fast only", "models": ["imagen-4-fast"]}))
        .await;
    let ok = app
        .generate_as(&secret, json!({"prompt": "fast", "model": "dall-e-3"}))
        .await;
    assert_eq!(ok.status(), 200, "an alias of an allowed model is allowed");
    let err = expect_error(
        app.generate_as(
            &secret,
            json!({"prompt": "ultra", "model": "imagen-4-ultra"}),
        )
        .await,
        403,
    )
    .await;
    assert_eq!(err["code"], "model_not_allowed");
    assert_eq!(err["param"], "model");
    assert_eq!(
        app.fal.count(fake_fal::Op::Submit),
        1,
        "no fal job for a 403"
    );
}

#[actix_web::test]
async fn configured_keys_keep_working_beside_database_keys() {
    let app = spawn_app_with(|s| {
        with_admin(s);
        s.auth.api_keys = vec![Secret::new("sk-static")];
    })
    .await;
    let (_, secret) = app.make_key(json!({"name": "db"})).await;
    for key in ["sk-static", secret.as_str()] {
        let res = app.generate_as(key, json!({"prompt": "both"})).await;
        assert_eq!(res.status(), 200, "{key}");
    }
}

#[actix_web::test]
async fn the_keys_commands_make_list_and_revoke_keys_in_the_configured_database() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_image-gateway"))
            .env_clear()
            .env("IMAGE_GATEWAY__DATABASE__DATA_DIR", dir.path())
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), stdout, stderr)
    };
    let (code, out, err) = run(&[
        "keys",
        "create",
        "--name",
        "from the cli",
        "--models",
        "imagen-4,imagen-4-ultra",
        "--budget-usd",
        "5",
        "--budget-period",
        "day",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let made: Value = serde_json::from_str(&out).unwrap();
    let id = made["id"].as_str().unwrap().to_owned();
    let secret = made["key"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("sk-"));
    assert_eq!(made["models"], json!(["imagen-4", "imagen-4-ultra"]));
    assert_eq!(made["budget_usd"], 5.0);
    assert!(dir.path().join("image-gateway.db").exists());

    let (code, out, _) = run(&["keys", "list"]);
    assert_eq!(code, Some(0));
    assert!(out.contains(&id) && !out.contains(&secret), "{out}");

    let (code, out, _) = run(&["keys", "revoke", &id]);
    assert_eq!(code, Some(0));
    let revoked: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(revoked["status"], "revoked");

    let (code, _, err) = run(&["keys", "create", "--name", "x", "--models", "midjourney"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("midjourney"), "{err}");
    let (code, _, err) = run(&["keys", "revoke", "key_missing"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("key_missing"), "{err}");

    // A running gateway on the same file knows the CLI's keys.
    let db = dir.path().to_owned();
    let app = spawn_app_with(move |s| {
        s.database.url = DatabaseUrl::default();
        s.database.data_dir = db.display().to_string();
    })
    .await;
    let (code, out, _) = run(&["keys", "create", "--name", "live"]);
    assert_eq!(code, Some(0));
    let live: Value = serde_json::from_str(&out).unwrap();
    let live = live["key"].as_str().unwrap().to_owned();
    assert_eq!(
        app.generate_as(&live, json!({"prompt": "cli key"}))
            .await
            .status(),
        200
    );
    let res = app
        .generate_as(&secret, json!({"prompt": "revoked by the cli"}))
        .await;
    expect_error(res, 401).await;
}

#[actix_web::test]
async fn replicas_sharing_postgres_share_keys_and_see_a_revocation_at_once() {
    let Some(pg) = PostgresServer::start().await else {
        return;
    };
    let url = pg.create_database("revocation").await;
    let a = spawn_app_with({
        let url = url.clone();
        move |s| {
            with_admin(s);
            s.database.url = DatabaseUrl::new(url);
        }
    })
    .await;
    let b = spawn_replica(&a.fal, |s| s.database.url = DatabaseUrl::new(url)).await;

    let (id, secret) = a
        .make_key(json!({"name": "shared", "models": ["imagen-4-fast"]}))
        .await;
    // Presented to B straight away, before B can have heard of it, the key
    // holds: B looks it up rather than serving as an open gateway.
    let res = b
        .generate_as(&secret, json!({"prompt": "at once", "model": "imagen-4"}))
        .await;
    assert_eq!(res.status(), 403, "the key's model list holds on B at once");
    // B closes at once too: a key exists in the shared table.
    within(
        Duration::from_secs(2),
        "replica B requires keys",
        async || b.post_generation(json!({"prompt": "anon"})).await.status() == 401,
    )
    .await;
    // B caches the key on first use.
    for _ in 0..3 {
        let res = b.generate_as(&secret, json!({"prompt": "on b"})).await;
        assert_eq!(res.status(), 200);
    }
    a.admin(Method::DELETE, &format!("/admin/v1/keys/{id}"), None)
        .await;
    within(
        Duration::from_secs(2),
        "replica B refuses the revoked key",
        async || {
            b.generate_as(&secret, json!({"prompt": "after"}))
                .await
                .status()
                == 401
        },
    )
    .await;
    let text = a.metrics().await + &b.metrics().await;
    assert!(!text.contains(PG_PASSWORD));
}
