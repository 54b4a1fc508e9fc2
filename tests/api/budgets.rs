//! Cost, spend and budgets: what each answer says it cost, the ledger and
//! the spend metrics, budgets that hold under concurrency (on SQLite, and
//! across two replicas sharing PostgreSQL), reservations released on failure
//! and expired after a crash, fal's invoice tags and billable units.

use std::time::Duration;

use fake_fal::{FakeConfig, Fault, FaultAction, Op};
use futures_util::future::join_all;
use image_gateway::config::{DatabaseUrl, PriceEntry, ProfileEntry, Secret, Usd};
use image_gateway::store::Store;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::keys::with_admin;
use crate::postgres::PostgresServer;

fn cost(res: &reqwest::Response) -> Option<String> {
    res.headers()
        .get("x-image-gateway-cost-usd")
        .map(|v| v.to_str().unwrap().to_owned())
}

fn header(res: &reqwest::Response, name: &str) -> String {
    res.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

fn slow(queue_ms: u64) -> FakeConfig {
    FakeConfig {
        queue_ms,
        full_size_images: false,
        ..FakeConfig::default()
    }
}

/// Micro-dollars of a JSON USD number, exactly.
fn micros(v: &Value) -> i64 {
    (v.as_f64().unwrap() * 1e6).round() as i64
}

#[actix_web::test]
async fn every_generation_answer_says_what_it_cost_and_the_ledger_agrees() {
    let app = spawn_app_with(with_admin).await;

    let res = app
        .post_generation(json!({"prompt": "priced", "model": "imagen-4-fast"}))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "x-cache"), "MISS");
    assert_eq!(
        cost(&res).as_deref(),
        Some("0.02"),
        "Imagen 4 fast: $0.02 an image"
    );

    let res = app
        .post_generation(json!({"prompt": "priced", "model": "imagen-4-fast"}))
        .await;
    assert_eq!(header(&res, "x-cache"), "HIT");
    assert_eq!(cost(&res).as_deref(), Some("0"), "a hit costs nothing");

    let res = app
        .post_generation(json!({"prompt": "three", "model": "imagen-4", "n": 3}))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(cost(&res).as_deref(), Some("0.12"), "three at $0.04");

    // The ledger, grouped by model and by key (no key: an open gateway).
    let (status, by_model) = app
        .admin(Method::GET, "/admin/v1/spend?group_by=model", None)
        .await;
    assert_eq!(status, 200, "{by_model}");
    assert_eq!(micros(&by_model["total_usd"]), 140_000);
    let rows = by_model["data"].as_array().unwrap();
    let row = |m: &str| rows.iter().find(|r| r["model"] == m).unwrap().clone();
    assert_eq!(
        (
            micros(&row("imagen-4-fast")["spend_usd"]),
            &row("imagen-4-fast")["images"]
        ),
        (20_000, &json!(1))
    );
    assert_eq!(
        (
            micros(&row("imagen-4")["spend_usd"]),
            &row("imagen-4")["requests"]
        ),
        (120_000, &json!(1))
    );
    let (_, by_key) = app.admin(Method::GET, "/admin/v1/spend", None).await;
    assert_eq!(by_key["data"][0]["key"], Value::Null);
    let (_, by_day) = app
        .admin(Method::GET, "/admin/v1/spend?group_by=day", None)
        .await;
    let today = time::OffsetDateTime::now_utc().date().to_string();
    assert_eq!(by_day["data"][0]["day"], today);
    let (_, empty) = app
        .admin(
            Method::GET,
            "/admin/v1/spend?from=2020-01-01&to=2020-01-02",
            None,
        )
        .await;
    assert_eq!(empty["data"], json!([]));

    // The metrics: spend by model, and what the hit saved.
    let text = app.metrics().await;
    let usd = |name, labels: &[(&str, &str)]| series(&text, name, labels).unwrap_or(-1.0);
    assert!(
        (usd(
            "image_gateway_spend_usd_total",
            &[("model", "imagen-4-fast")]
        ) - 0.02)
            .abs()
            < 1e-9
    );
    assert!((usd("image_gateway_spend_usd_total", &[("model", "imagen-4")]) - 0.12).abs() < 1e-9);
    assert!(
        (usd(
            "image_gateway_spend_saved_usd_total",
            &[("model", "imagen-4-fast"), ("reason", "cache")]
        ) - 0.02)
            .abs()
            < 1e-9
    );
}

#[actix_web::test]
async fn coalesced_waiters_cost_nothing_and_the_request_that_made_the_job_pays() {
    let app = spawn_app_with_fake(slow(300), |_| {}).await;
    let answers = join_all(
        (0..5).map(|_| app.post_generation(json!({"prompt": "together", "model": "imagen-4"}))),
    )
    .await;
    let mut costs: Vec<(String, String)> = answers
        .iter()
        .map(|r| (header(r, "x-cache"), cost(r).unwrap()))
        .collect();
    costs.sort();
    assert_eq!(
        costs,
        [
            ("COALESCED".into(), "0".into()),
            ("COALESCED".into(), "0".into()),
            ("COALESCED".into(), "0".into()),
            ("COALESCED".into(), "0".into()),
            ("MISS".into(), "0.04".into()),
        ]
    );
    assert_eq!(app.fal.count(Op::Submit), 1);
    let text = app.metrics().await;
    let saved = series(
        &text,
        "image_gateway_spend_saved_usd_total",
        &[("model", "imagen-4"), ("reason", "coalesced")],
    )
    .unwrap();
    assert!((saved - 0.16).abs() < 1e-9, "{saved}");
}

#[actix_web::test]
async fn a_key_over_budget_gets_insufficient_quota_and_no_fal_job_but_still_its_free_hits() {
    let app = spawn_app_with(with_admin).await;
    let (id, key) = app
        .make_key(json!({"name": "small", "budget_usd": 0.05}))
        .await;

    let first = app
        .generate_as(&key, json!({"prompt": "one", "model": "imagen-4"}))
        .await;
    assert_eq!(first.status(), 200);
    assert_eq!(cost(&first).as_deref(), Some("0.04"));

    let refused = app
        .generate_as(&key, json!({"prompt": "two", "model": "imagen-4"}))
        .await;
    assert_eq!(header(&refused, "x-should-retry"), "false");
    assert!(refused.headers().get("retry-after").is_none());
    let err = expect_error(refused, 429).await;
    assert_eq!(err["type"], "insufficient_quota");
    assert_eq!(err["code"], "insufficient_quota");
    let message = err["message"].as_str().unwrap();
    assert!(
        message.contains("$0.04") && message.contains("$0.01"),
        "{message}"
    );
    assert_eq!(
        app.fal.count(Op::Submit),
        1,
        "no fal job for a refused request"
    );

    // Free answers need no budget.
    let hit = app
        .generate_as(&key, json!({"prompt": "one", "model": "imagen-4"}))
        .await;
    assert_eq!(
        (hit.status().as_u16(), header(&hit, "x-cache")),
        (200, "HIT".into())
    );
    assert_eq!(cost(&hit).as_deref(), Some("0"));
    // A cheaper model still does not fit: 0.04 + 0.02 > 0.05.
    let res = app
        .generate_as(&key, json!({"prompt": "three", "model": "imagen-4-fast"}))
        .await;
    expect_error(res, 429).await;

    let (_, k) = app
        .admin(Method::GET, &format!("/admin/v1/keys/{id}"), None)
        .await;
    assert_eq!(micros(&k["spend_usd"]), 40_000);
    assert_eq!(micros(&k["reserved_usd"]), 0);
    // Raising the budget lets it spend again, at once.
    app.admin(
        Method::PATCH,
        &format!("/admin/v1/keys/{id}"),
        Some(json!({"budget_usd": 1})),
    )
    .await;
    let res = app
        .generate_as(&key, json!({"prompt": "two", "model": "imagen-4"}))
        .await;
    assert_eq!(res.status(), 200);
    // /metrics needs a key now that one exists.
    let text = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let refusals = series(&text, "image_gateway_budget_refusals_total", &[]);
    assert_eq!(refusals, Some(2.0));
}

#[actix_web::test]
async fn concurrent_requests_never_take_a_key_past_its_budget() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let app = spawn_app_with_fake(slow(150), move |s| {
        with_admin(s);
        s.database.url = DatabaseUrl::default();
        s.database.data_dir = data;
    })
    .await;
    let (id, key) = app
        .make_key(json!({"name": "race", "budget_usd": 0.10, "budget_period": "day"}))
        .await;
    let answers = join_all((0..20).map(|i| {
        app.generate_as(
            &key,
            json!({"prompt": format!("race {i}"), "model": "imagen-4-fast"}),
        )
    }))
    .await;
    let ok = answers.iter().filter(|r| r.status() == 200).count();
    let refused = answers.iter().filter(|r| r.status() == 429).count();
    assert_eq!((ok, refused), (5, 15), "$0.10 buys five $0.02 images");
    assert_eq!(app.fal.count(Op::Submit), 5);
    let (_, k) = app
        .admin(Method::GET, &format!("/admin/v1/keys/{id}"), None)
        .await;
    assert_eq!(micros(&k["spend_usd"]), 100_000);
    assert_eq!(micros(&k["reserved_usd"]), 0);
    let (_, ledger) = app
        .admin(Method::GET, &format!("/admin/v1/spend?key={id}"), None)
        .await;
    assert_eq!(micros(&ledger["total_usd"]), 100_000);
    assert_eq!(ledger["data"][0]["requests"], 5);
}

#[actix_web::test]
async fn two_replicas_sharing_postgres_enforce_one_budget_under_concurrent_load() {
    let Some(pg) = PostgresServer::start().await else {
        return;
    };
    let url = pg.create_database("fleet_budget").await;
    let a = spawn_app_with_fake(slow(100), {
        let url = url.clone();
        move |s| {
            with_admin(s);
            s.database.url = DatabaseUrl::new(url);
        }
    })
    .await;
    let b = spawn_replica(&a.fal, {
        let url = url.clone();
        move |s| {
            with_admin(s);
            s.database.url = DatabaseUrl::new(url);
        }
    })
    .await;
    let (id, key) = a
        .make_key(json!({"name": "fleet", "budget_usd": 0.5, "budget_period": "month"}))
        .await;
    // 60 distinct requests at $0.04, half on each replica, all at once.
    let answers = join_all((0..60).map(|i| {
        let app = if i % 2 == 0 { &a } else { &b };
        app.generate_as(
            &key,
            json!({"prompt": format!("fleet {i}"), "model": "imagen-4"}),
        )
    }))
    .await;
    let statuses: Vec<u16> = answers.iter().map(|r| r.status().as_u16()).collect();
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(ok, 12, "$0.50 buys twelve $0.04 images: {statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 48);
    assert_eq!(a.fal.count(Op::Submit), 12);
    let paid: Vec<&str> = answers
        .iter()
        .filter_map(|r| r.headers().get("x-image-gateway-cost-usd"))
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(paid, vec!["0.04"; 12]);
    // Both replicas read one exact ledger.
    for app in [&a, &b] {
        let (_, k) = app
            .admin(Method::GET, &format!("/admin/v1/keys/{id}"), None)
            .await;
        assert_eq!(micros(&k["spend_usd"]), 480_000);
        assert_eq!(micros(&k["reserved_usd"]), 0);
        let (_, ledger) = app
            .admin(Method::GET, "/admin/v1/spend?group_by=key", None)
            .await;
        assert_eq!(micros(&ledger["total_usd"]), 480_000);
        assert_eq!(ledger["data"][0]["requests"], 12);
        assert_eq!(ledger["data"][0]["images"], 12);
    }
}

#[actix_web::test]
async fn a_failed_generation_gives_its_reservation_back() {
    let app = spawn_app_with(with_admin).await;
    let (id, key) = app
        .make_key(json!({"name": "exact", "budget_usd": 0.04}))
        .await;
    app.fal.inject(Fault {
        op: Op::Submit,
        times: 1,
        action: FaultAction::Respond {
            status: 400,
            headers: vec![],
            body: r#"{"detail":"bad request"}"#.into(),
        },
    });
    let failed = app
        .generate_as(&key, json!({"prompt": "fails", "model": "imagen-4"}))
        .await;
    assert!(failed.status().as_u16() >= 400);
    let ok = app
        .generate_as(&key, json!({"prompt": "works", "model": "imagen-4"}))
        .await;
    assert_eq!(ok.status(), 200, "the failure spent nothing");
    let (_, k) = app
        .admin(Method::GET, &format!("/admin/v1/keys/{id}"), None)
        .await;
    assert_eq!(micros(&k["spend_usd"]), 40_000);
    assert_eq!(micros(&k["reserved_usd"]), 0);
}

#[actix_web::test]
async fn a_crashed_replicas_reservation_expires_and_gives_the_budget_back() {
    let dir = tempfile::tempdir().unwrap();
    let settings = image_gateway::config::DatabaseSettings {
        data_dir: dir.path().display().to_string(),
        ..Default::default()
    };
    let store = Store::open(&settings).await.unwrap();
    let (key, _) = store
        .create_key(image_gateway::store::keys::NewKey {
            name: "crash".into(),
            budget_micro_usd: Some(40_000),
            ..Default::default()
        })
        .await
        .unwrap();
    // A replica reserves and dies before settling (a 3 s reservation:
    // expiry is kept in whole seconds, so it lasts between 2 and 3 s, long
    // enough for the next line on a loaded machine).
    let held = store.reserve(&key.id, 40_000, 3).await.unwrap();
    assert!(held.is_ok());
    let refused = store.reserve(&key.id, 40_000, 300).await.unwrap();
    assert!(
        matches!(
            refused,
            Err(image_gateway::store::budget::Refusal::OverBudget {
                reserved_micro_usd: 40_000,
                ..
            })
        ),
        "{refused:?}"
    );
    tokio::time::sleep(Duration::from_millis(3_100)).await;
    // Expired: the next reservation gives it back first.
    let again = store.reserve(&key.id, 40_000, 300).await.unwrap();
    assert!(again.is_ok(), "{again:?}");
    let key = store.key(&key.id).await.unwrap().unwrap();
    assert_eq!(key.reserved_micro_usd, 40_000, "only the live reservation");
}

#[actix_web::test]
async fn every_fal_job_is_tagged_with_its_key_id_never_its_secret() {
    let app = spawn_app_with(|s| {
        with_admin(s);
        s.auth.api_keys = vec![Secret::new("sk-static-tagged")];
    })
    .await;
    let (id, key) = app.make_key(json!({"name": "tagged"})).await;
    for (caller, prompt) in [(key.as_str(), "db key"), ("sk-static-tagged", "static")] {
        let res = app.generate_as(caller, json!({"prompt": prompt})).await;
        assert_eq!(res.status(), 200);
    }
    let tags: Vec<Option<String>> = app
        .fal
        .calls()
        .iter()
        .filter(|c| c.op == Op::Submit)
        .map(|c| {
            c.fal_headers
                .iter()
                .find(|(k, _)| k == "x-fal-tags")
                .map(|(_, v)| v.clone())
        })
        .collect();
    let static_account = {
        use sha2::Digest;
        format!(
            "cfg-{}",
            &hex::encode(sha2::Sha256::digest(b"sk-static-tagged"))[..12]
        )
    };
    assert_eq!(
        tags,
        [
            Some(format!("gateway_key={id}")),
            Some(format!("gateway_key={static_account}")),
        ]
    );
    let all = format!("{:?}", app.fal.calls());
    assert!(!all.contains(&key) && !all.contains("sk-static-tagged"));
    // The ledger names the same accounts.
    let (_, by_key) = app.admin(Method::GET, "/admin/v1/spend", None).await;
    let mut accounts: Vec<String> = by_key["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap().to_owned())
        .collect();
    accounts.sort();
    let mut want = vec![static_account, id];
    want.sort();
    assert_eq!(accounts, want);

    // Without a key there is nothing to tag.
    let open = spawn_app().await;
    assert_eq!(
        open.post_generation(json!({"prompt": "open"}))
            .await
            .status(),
        200
    );
    let submit = open
        .fal
        .calls()
        .into_iter()
        .find(|c| c.op == Op::Submit)
        .unwrap();
    assert!(!submit.fal_headers.iter().any(|(k, _)| k == "x-fal-tags"));
}

#[actix_web::test]
async fn an_endpoint_priced_per_billable_unit_costs_what_fal_reports() {
    let fake = FakeConfig {
        billable_units_per_image: 2.5,
        ..FakeConfig::default()
    };
    let app = spawn_app_with_fake(fake, |s| {
        with_admin(s);
        s.models.profiles.push(ProfileEntry {
            endpoint: "fal-ai/imagen4/preview/fast".into(),
            price: Some(PriceEntry {
                per: "billable_unit".into(),
                usd: Usd::Text("0.01".into()),
                resolutions: vec![],
                first_megapixel_usd: None,
                max_units_per_image: Some(3),
                checked: "2026-11-30".into(),
                source: None,
            }),
            ..ProfileEntry::default()
        });
    })
    .await;
    let (id, key) = app
        .make_key(json!({"name": "units", "budget_usd": 0.06}))
        .await;
    // Two images, at most 3 units each: $0.06 reserved; fal bills 5 units.
    let res = app
        .generate_as(
            &key,
            json!({"prompt": "units", "model": "imagen-4-fast", "n": 2}),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(cost(&res).as_deref(), Some("0.05"));
    let (_, k) = app
        .admin(Method::GET, &format!("/admin/v1/keys/{id}"), None)
        .await;
    assert_eq!(micros(&k["spend_usd"]), 50_000);
    // $0.01 left: one image could take 3 units ($0.03).
    let res = app
        .generate_as(&key, json!({"prompt": "more", "model": "imagen-4-fast"}))
        .await;
    expect_error(res, 429).await;
}

#[actix_web::test]
async fn the_ledger_and_the_keys_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let configure = move |s: &mut image_gateway::config::Settings| {
        with_admin(s);
        s.database.url = DatabaseUrl::default();
        s.database.data_dir = data.clone();
    };
    let first = spawn_app_with(configure.clone()).await;
    let (id, key) = first
        .make_key(json!({"name": "durable", "budget_usd": 1}))
        .await;
    let res = first
        .generate_as(&key, json!({"prompt": "before", "model": "imagen-4"}))
        .await;
    assert_eq!(res.status(), 200);
    first.handle.stop(true).await;

    let second = spawn_replica(&first.fal, configure).await;
    let (_, k) = second
        .admin(Method::GET, &format!("/admin/v1/keys/{id}"), None)
        .await;
    assert_eq!(micros(&k["spend_usd"]), 40_000);
    let res = second
        .generate_as(&key, json!({"prompt": "after", "model": "imagen-4"}))
        .await;
    assert_eq!(res.status(), 200);
    let (_, ledger) = second.admin(Method::GET, "/admin/v1/spend", None).await;
    assert_eq!(micros(&ledger["total_usd"]), 80_000);
}
