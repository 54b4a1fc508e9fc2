//! Loading configuration: layers, names, errors and redaction.

use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_are_valid_and_pick_the_local_backend_without_a_key() {
    let s = Settings::load_from(None, env(&[])).unwrap();
    assert_eq!(s.server.listen, "0.0.0.0:8080");
    assert_eq!(s.fal.queue_url, "https://queue.fal.run");
    assert_eq!(s.fal.run_url, "https://fal.run");
    assert_eq!(s.backend, BackendChoice::Auto);
    assert_eq!(s.backend_kind(), BackendKind::Local);
}

#[test]
fn fixed_environment_names_are_honoured() {
    let s = Settings::load_from(
        None,
        env(&[
            ("IMAGE_GATEWAY__SERVER__LISTEN", "127.0.0.1:9999"),
            ("IMAGE_GATEWAY__BACKEND", "fal"),
            ("IMAGE_GATEWAY__FAL__QUEUE_URL", "http://127.0.0.1:1234"),
            ("IMAGE_GATEWAY__FAL__RUN_URL", "http://127.0.0.1:1235"),
            ("IMAGE_GATEWAY__AUTH__API_KEYS", "sk-one, sk-two,,"),
            ("IMAGE_GATEWAY__SERVER__REQUEST_TIMEOUT_SECONDS", "12"),
            ("IMAGE_GATEWAY__CACHE__ENABLED", "false"),
            ("FAL_KEY", "fal-secret"),
        ]),
    )
    .unwrap();
    assert_eq!(s.server.listen, "127.0.0.1:9999");
    assert_eq!(s.backend_kind(), BackendKind::Fal);
    assert_eq!(s.fal.queue_url, "http://127.0.0.1:1234");
    assert_eq!(s.fal.run_url, "http://127.0.0.1:1235");
    let keys: Vec<&str> = s.auth.api_keys.iter().map(Secret::expose).collect();
    assert_eq!(keys, ["sk-one", "sk-two"]);
    assert_eq!(s.server.request_timeout_seconds, 12);
    assert!(!s.cache.enabled);
    assert_eq!(s.fal.key.as_ref().map(Secret::expose), Some("fal-secret"));
}

#[test]
fn a_single_numeric_client_key_stays_a_string() {
    let s = Settings::load_from(None, env(&[("IMAGE_GATEWAY__AUTH__API_KEYS", "12345")])).unwrap();
    assert_eq!(s.auth.api_keys[0].expose(), "12345");
}

#[test]
fn the_file_layer_sits_between_defaults_and_environment() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = \"127.0.0.1:7000\"\nmax_prompt_chars = 100\n[auth]\napi_keys = [\"a\", \"b\"]\n",
    )
    .unwrap();
    let s = Settings::load_from(
        Some(&path),
        env(&[("IMAGE_GATEWAY__SERVER__LISTEN", "127.0.0.1:7001")]),
    )
    .unwrap();
    assert_eq!(s.server.listen, "127.0.0.1:7001");
    assert_eq!(s.server.max_prompt_chars, 100);
    assert_eq!(s.auth.api_keys.len(), 2);
}

#[test]
fn backend_fal_without_a_key_refuses_to_start() {
    let err = Settings::load_from(None, env(&[("IMAGE_GATEWAY__BACKEND", "fal")])).unwrap_err();
    assert_eq!(err.key, "backend");
}

#[test]
fn invalid_values_name_their_key() {
    let cases = [
        (
            "IMAGE_GATEWAY__SERVER__LISTEN",
            "not-an-address",
            "server.listen",
        ),
        ("IMAGE_GATEWAY__FAL__QUEUE_URL", "ftp://x", "fal.queue_url"),
        ("IMAGE_GATEWAY__FAL__RUN_URL", "nope", "fal.run_url"),
        (
            "IMAGE_GATEWAY__SERVER__REQUEST_TIMEOUT_SECONDS",
            "soon",
            "server.request_timeout_seconds",
        ),
        (
            "IMAGE_GATEWAY__SERVER__REQUEST_TIMEOUT_SECONDS",
            "0",
            "server.request_timeout_seconds",
        ),
        ("IMAGE_GATEWAY__BACKEND", "openai", "backend"),
        (
            "IMAGE_GATEWAY__AUTH__API_KEYS",
            "sha256:abc",
            "auth.api_keys",
        ),
        ("IMAGE_GATEWAY__MODELS__DEFAULT", "nope", "models.default"),
        ("IMAGE_GATEWAY__LOG__LEVEL", "=[", "log.level"),
    ];
    for (var, value, key) in cases {
        let err = Settings::load_from(None, env(&[(var, value)])).unwrap_err();
        assert!(
            err.key.starts_with(key),
            "{var}={value}: expected key {key}, got {err}"
        );
    }
}

#[test]
fn an_unknown_key_is_refused() {
    let err = Settings::load_from(None, env(&[("IMAGE_GATEWAY__SERVER__LISTN", "x")])).unwrap_err();
    assert!(err.to_string().contains("listn"), "{err}");
}

#[test]
fn the_annotated_example_holds_every_key_with_its_default_and_env_name() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/config.example.toml");
    let loaded = Settings::load_from(Some(&path), env(&[])).unwrap();
    assert_eq!(
        loaded.to_redacted_toml(),
        Settings::default().to_redacted_toml()
    );

    let text = std::fs::read_to_string(&path).unwrap();
    let defaults: toml::Table = toml::from_str(&Settings::default().to_redacted_toml()).unwrap();
    let mut checked = 0;
    for (section, value) in &defaults {
        let keys: Vec<(String, String)> = match value {
            toml::Value::Table(t) => t
                .keys()
                .filter(|k| !(section == "models" && *k == "catalog"))
                .map(|k| {
                    (
                        format!("{section}.{k}"),
                        format!(
                            "IMAGE_GATEWAY__{}__{}",
                            section.to_uppercase(),
                            k.to_uppercase()
                        ),
                    )
                })
                .collect(),
            _ => vec![(
                section.clone(),
                format!("IMAGE_GATEWAY__{}", section.to_uppercase()),
            )],
        };
        for (key, var) in keys {
            assert!(
                text.contains(&format!("# env: {var}")),
                "{key}: no `# env: {var}` line"
            );
            checked += 1;
        }
    }
    assert!(checked > 40, "only {checked} keys checked");
    assert!(text.contains("# env: FAL_KEY"));
}

/// docs/configuration.md's table is generated from the example by
/// `scripts/config-table`; this fails when they disagree.
#[test]
fn the_documented_configuration_table_matches_the_example() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("docs/configuration.md")).unwrap();
    let defaults: toml::Table = toml::from_str(&Settings::default().to_redacted_toml()).unwrap();
    let mut missing = Vec::new();
    for (section, value) in &defaults {
        let entries: Vec<(String, String, String)> = match value {
            toml::Value::Table(t) => t
                .iter()
                .filter(|(k, _)| !(section == "models" && *k == "catalog"))
                .map(|(k, v)| {
                    (
                        format!("{section}.{k}"),
                        v.to_string(),
                        format!(
                            "IMAGE_GATEWAY__{}__{}",
                            section.to_uppercase(),
                            k.to_uppercase()
                        ),
                    )
                })
                .collect(),
            v => vec![(
                section.clone(),
                v.to_string(),
                format!("IMAGE_GATEWAY__{}", section.to_uppercase()),
            )],
        };
        for (key, default, env) in entries {
            let row = format!("| `{key}` | `{default}` | `{env}` |");
            if !readme.contains(&row) {
                missing.push(row);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/configuration.md lacks (run scripts/config-table):\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_redis_url_is_read_from_the_environment_and_its_password_never_shown() {
    let s = Settings::load_from(
        None,
        env(&[(
            "IMAGE_GATEWAY__CACHE__REDIS_URL",
            "redis://gw:redis-pass-SECRET@cache.internal:6380/2",
        )]),
    )
    .unwrap();
    assert_eq!(
        s.cache.redis_url.expose(),
        "redis://gw:redis-pass-SECRET@cache.internal:6380/2"
    );
    let shown = [
        s.to_redacted_toml(),
        format!("{s:?}"),
        s.cache.redis_url.to_string(),
    ];
    for text in &shown {
        assert!(!text.contains("redis-pass-SECRET"), "{text}");
        assert!(!text.contains("gw:"), "{text}");
    }
    assert!(shown[0].contains("redis://[redacted]@cache.internal:6380/2"));
}

#[test]
fn redis_urls_are_redacted_in_every_form() {
    let cases = [
        ("", ""),
        ("redis://localhost:6379", "redis://localhost:6379"),
        ("redis://:pw@h:1/0", "redis://[redacted]@h:1/0"),
        ("redis://user:p@ss@h/0", "redis://[redacted]@h/0"),
        ("redis://h:1/0?password=pw", "redis://h:1?[redacted]"),
        ("unix:///run/redis.sock", "unix:///run/redis.sock"),
        ("not a url with pw", "[redacted]"),
    ];
    for (url, shown) in cases {
        assert_eq!(RedisUrl::new(url).redacted(), shown, "{url}");
    }
}

#[test]
fn bad_redis_settings_name_their_key_without_the_password() {
    for (var, value, key) in [
        (
            "IMAGE_GATEWAY__CACHE__REDIS_URL",
            "rediss://:pw-SECRET@h:6379",
            "cache.redis_url",
        ),
        (
            "IMAGE_GATEWAY__CACHE__REDIS_URL",
            "http://:pw-SECRET@h:6379",
            "cache.redis_url",
        ),
        (
            "IMAGE_GATEWAY__CACHE__REDIS_URL",
            "redis://:pw-SECRET@h:notaport",
            "cache.redis_url",
        ),
        (
            "IMAGE_GATEWAY__CACHE__REDIS_TIMEOUT_MS",
            "0",
            "cache.redis_timeout_ms",
        ),
        (
            "IMAGE_GATEWAY__CACHE__REDIS_LOCK_TTL_MS",
            "500",
            "cache.redis_lock_ttl_ms",
        ),
    ] {
        let err = Settings::load_from(None, env(&[(var, value)])).unwrap_err();
        assert_eq!(err.key, key, "{var}={value}: {err}");
        assert!(!err.to_string().contains("pw-SECRET"), "{err}");
    }
}

#[test]
fn redacted_output_never_shows_secrets() {
    let s = Settings::load_from(
        None,
        env(&[
            ("FAL_KEY", "fal-very-secret"),
            ("IMAGE_GATEWAY__AUTH__API_KEYS", "sk-client-secret"),
        ]),
    )
    .unwrap();
    let text = s.to_redacted_toml();
    assert!(!text.contains("fal-very-secret"));
    assert!(!text.contains("sk-client-secret"));
    assert!(text.contains("[redacted]"));
    assert!(!format!("{s:?}").contains("secret"));
}
