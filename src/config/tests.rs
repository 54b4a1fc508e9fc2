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
            ("IMAGE_GATEWAY__CACHE__MODE", "seeded"),
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
    assert_eq!(s.cache.mode, CacheMode::Seeded);
    assert_eq!(s.fal.key.as_ref().map(Secret::expose), Some("fal-secret"));
}

#[test]
fn download_hosts_default_to_fal_media_and_take_a_comma_separated_list() {
    let s = Settings::load_from(None, env(&[])).unwrap();
    assert_eq!(s.fal.download_hosts, ["fal.media"]);
    assert!(!s.fal.download_private_networks);
    let s = Settings::load_from(
        None,
        env(&[
            (
                "IMAGE_GATEWAY__FAL__DOWNLOAD_HOSTS",
                "fal.media, cdn.example.com,10.0.0.7,::1",
            ),
            ("IMAGE_GATEWAY__FAL__DOWNLOAD_PRIVATE_NETWORKS", "true"),
        ]),
    )
    .unwrap();
    assert_eq!(
        s.fal.download_hosts,
        ["fal.media", "cdn.example.com", "10.0.0.7", "::1"]
    );
    assert!(s.fal.download_private_networks);
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
        (
            "IMAGE_GATEWAY__FAL__DOWNLOAD_HOSTS",
            "fal.media,https://evil.example",
            "fal.download_hosts",
        ),
        (
            "IMAGE_GATEWAY__FAL__DOWNLOAD_HOSTS",
            "fal.media:443",
            "fal.download_hosts",
        ),
        (
            "IMAGE_GATEWAY__FAL__BACKUP_QUEUE_URL",
            "queue.falrun.com",
            "fal.backup_queue_url",
        ),
        (
            "IMAGE_GATEWAY__FAL__OBJECT_EXPIRATION_SECONDS",
            "60",
            "fal.object_expiration_seconds",
        ),
        (
            "IMAGE_GATEWAY__FAL__QUEUE_PRIORITY",
            "urgent",
            "fal.queue_priority",
        ),
        (
            "IMAGE_GATEWAY__FAL__RETRY_BUDGET_SECONDS",
            "0",
            "fal.retry_budget_seconds",
        ),
        (
            "IMAGE_GATEWAY__FAL__STATUS_STREAM_IDLE_TIMEOUT_MS",
            "0",
            "fal.status_stream_idle_timeout_ms",
        ),
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
fn fals_backup_hosts_are_used_only_with_fals_own_hosts() {
    let fal = Settings::default().fal;
    assert_eq!(
        fal.backup_origins(),
        [
            (
                "https://queue.fal.run".to_owned(),
                "https://queue.falrun.com".to_owned()
            ),
            (
                "https://fal.run".to_owned(),
                "https://falrun.com".to_owned()
            ),
        ]
    );
    let mut proxied = fal.clone();
    proxied.queue_url = "https://fal-proxy.internal".into();
    proxied.run_url = "https://fal-proxy.internal/run".into();
    assert!(proxied.backup_origins().is_empty());
    proxied.backup_queue_url = "https://fal-proxy-2.internal/".into();
    assert_eq!(
        proxied.backup_origins(),
        [(
            "https://fal-proxy.internal".to_owned(),
            "https://fal-proxy-2.internal".to_owned()
        )]
    );
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
                .filter(|k| !(section == "models" && (*k == "catalog" || *k == "profiles")))
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
                .filter(|(k, _)| !(section == "models" && (*k == "catalog" || *k == "profiles")))
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
        (
            "redis://h:1/0?password=pw",
            "redis://h:1/0?password=[redacted]",
        ),
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

/// What an operator sees for each kind of mistake: one line naming the key,
/// the value given, where it came from and what is allowed.
#[test]
fn bad_values_get_one_line_naming_key_value_origin_and_allowed_values() {
    let cases: &[(&str, &str, &str, &[&str])] = &[
        (
            "IMAGE_GATEWAY__BACKEND",
            "gpu",
            "backend",
            &["`gpu`", "`auto`, `fal`, `local`", "IMAGE_GATEWAY__BACKEND"],
        ),
        (
            "IMAGE_GATEWAY__CACHE__SCOPE",
            "tenant",
            "cache.scope",
            &["`tenant`", "`global`, `per_key`"],
        ),
        (
            "IMAGE_GATEWAY__LOG__FORMAT",
            "xml",
            "log.format",
            &["`xml`", "`text`, `json`"],
        ),
        (
            "IMAGE_GATEWAY__FAL__MODE",
            "async",
            "fal.mode",
            &["`async`", "`queue`, `sync`"],
        ),
        (
            "IMAGE_GATEWAY__SERVER__WORKERS",
            "-1",
            "server.workers",
            &["`-1`", "from 0 to 1024", "IMAGE_GATEWAY__SERVER__WORKERS"],
        ),
        (
            "IMAGE_GATEWAY__SERVER__WORKERS",
            "100000",
            "server.workers",
            &["`100000`", "from 0 to 1024"],
        ),
        (
            "IMAGE_GATEWAY__SERVER__REQUEST_TIMEOUT_SECONDS",
            "-5",
            "server.request_timeout_seconds",
            &["`-5`", "from 1 to 86400 (seconds)"],
        ),
        (
            "IMAGE_GATEWAY__SERVER__REQUEST_TIMEOUT_SECONDS",
            "18446744073709551615",
            "server.request_timeout_seconds",
            &["from 1 to 86400 (seconds)"],
        ),
        (
            "IMAGE_GATEWAY__SERVER__KEEP_ALIVE_SECONDS",
            "99999999999",
            "server.keep_alive_seconds",
            &["from 0 to 3600 (seconds)"],
        ),
        (
            "IMAGE_GATEWAY__CACHE__MODE",
            "some",
            "cache.mode",
            &["`some`", "`all`, `seeded`, `off`"],
        ),
        (
            "IMAGE_GATEWAY__METRICS__ENABLED",
            "maybe",
            "metrics.enabled",
            &["`maybe`", "`true` or `false`"],
        ),
        (
            "IMAGE_GATEWAY__SERVER__LISTN",
            "x",
            "server.listn",
            &["no such setting", "`listen`"],
        ),
    ];
    for (var, value, key, needles) in cases {
        let err = Settings::load_from(None, env(&[(var, value)])).unwrap_err();
        let text = err.to_string();
        assert_eq!(err.key, *key, "{var}={value}: {text}");
        assert!(
            !text.contains('\n'),
            "{var}={value}: more than one line: {text}"
        );
        for needle in *needles {
            assert!(
                text.contains(needle),
                "{var}={value}: no {needle:?} in: {text}"
            );
        }
        for internal in ["enum ", "variant", "u64", "usize", "invalid type"] {
            assert!(
                !text.contains(internal),
                "{var}={value}: Rust internals in: {text}"
            );
        }
    }
}

#[test]
fn values_that_would_overflow_later_are_refused_with_the_allowed_range() {
    // Each of these panicked at start-up or on the first request: an
    // Instant past the clock's end, moka's TTL limit, actix's worker cap.
    for (var, key) in [
        (
            "IMAGE_GATEWAY__SERVER__REQUEST_TIMEOUT_SECONDS",
            "server.request_timeout_seconds",
        ),
        (
            "IMAGE_GATEWAY__SERVER__KEEP_ALIVE_SECONDS",
            "server.keep_alive_seconds",
        ),
        ("IMAGE_GATEWAY__CACHE__TTL_SECONDS", "cache.ttl_seconds"),
        ("IMAGE_GATEWAY__FILES__TTL_SECONDS", "files.ttl_seconds"),
        ("IMAGE_GATEWAY__SERVER__WORKERS", "server.workers"),
        (
            "IMAGE_GATEWAY__LIMITS__MAX_CONCURRENT_JOBS",
            "limits.max_concurrent_jobs",
        ),
    ] {
        let err = Settings::load_from(
            None,
            env(&[
                (var, "18446744073709551615"),
                (
                    "IMAGE_GATEWAY__FILES__TTL_SECONDS",
                    if key == "files.ttl_seconds" {
                        "18446744073709551615"
                    } else {
                        "31536000"
                    },
                ),
            ]),
        )
        .unwrap_err();
        assert_eq!(err.key, key, "{err}");
        assert!(
            err.message.contains("allowed: a whole number from"),
            "{err}"
        );
    }
}

#[test]
fn numeric_settings_all_have_a_range_that_holds_their_default() {
    let defaults = Settings::default();
    let numeric = validate::numeric_settings(&defaults);
    assert!(
        numeric.len() > 25,
        "only {} numeric settings found",
        numeric.len()
    );
    for (key, value) in numeric {
        let range = validate::range_of(&key).unwrap_or_else(|| {
            panic!("`{key}` has no row in config::validate::RANGES: add its allowed minimum and maximum")
        });
        let value = value.unwrap();
        assert!(
            (range.min..=range.max).contains(&value),
            "{key}: default {value} outside {range:?}"
        );
    }
    let keys = validate::setting_keys(&defaults);
    for range in validate::RANGES {
        assert!(
            keys.iter().any(|k| k == range.key),
            "RANGES names unknown `{}`",
            range.key
        );
    }
}

#[test]
fn bounds_of_each_range_are_accepted() {
    for range in validate::RANGES {
        for bound in [range.min, range.max] {
            let mut vars = vec![(error::env_name(range.key), bound.to_string())];
            // Keep the cross-checks between settings satisfied.
            match range.key {
                "cache.ttl_seconds" => vars.push((
                    "IMAGE_GATEWAY__FILES__TTL_SECONDS".into(),
                    bound.to_string(),
                )),
                "files.ttl_seconds" => vars.push((
                    "IMAGE_GATEWAY__CACHE__TTL_SECONDS".into(),
                    bound.min(1800).to_string(),
                )),
                "cache.redis_timeout_ms" => vars.push((
                    "IMAGE_GATEWAY__CACHE__REDIS_LOCK_TTL_MS".into(),
                    (bound * 3).to_string(),
                )),
                "cache.redis_lock_ttl_ms" => vars.push((
                    "IMAGE_GATEWAY__CACHE__REDIS_TIMEOUT_MS".into(),
                    (bound / 3).clamp(1, 250).to_string(),
                )),
                _ => {}
            }
            if let Err(e) = Settings::load_from(None, vars.clone()) {
                panic!("{vars:?}: {e}");
            }
        }
    }
}

#[test]
fn a_directory_given_as_the_config_file_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let err = Settings::load_from(Some(dir.path()), env(&[])).unwrap_err();
    assert_eq!(err.key, "--config");
    assert!(err.message.contains("is a directory"), "{err}");
}

#[test]
fn file_mistakes_name_the_key_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.toml");
    for (text, key, needle) in [
        ("[server]\nworkers = -1\n", "server.workers", "`-1`"),
        ("backend = \"gpu\"\n", "backend", "`gpu` is not one of"),
        ("[server]\nworkers = \n", "--config", "line 2"),
        (
            "[[models.catalog]]\nendpoint = \"fal-ai/flux/dev\"\n",
            "models.catalog[0].id",
            "required",
        ),
        (
            "[server]\ntimeout = 5\n",
            "server.timeout",
            "no such setting",
        ),
    ] {
        std::fs::write(&path, text).unwrap();
        let err = Settings::load_from(Some(&path), env(&[])).unwrap_err();
        let shown = err.to_string();
        assert_eq!(err.key, key, "{text:?}: {shown}");
        assert!(shown.contains(needle), "{text:?}: {shown}");
        assert!(
            shown.contains(&path.display().to_string()),
            "{text:?}: {shown}"
        );
        assert!(!shown.contains('\n'), "{text:?}: {shown}");
    }
}

#[test]
fn a_secret_of_the_wrong_type_is_not_repeated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.toml");
    std::fs::write(&path, "[fal]\nkey = [\"fal-SECRET-123\"]\n").unwrap();
    let err = Settings::load_from(Some(&path), env(&[])).unwrap_err();
    assert_eq!(err.key, "fal.key", "{err}");
    assert!(!err.to_string().contains("SECRET"), "{err}");
}

#[test]
fn a_setting_spelled_with_one_underscore_after_the_prefix_stops_start_up() {
    for (var, key, right) in [
        (
            "IMAGE_GATEWAY_AUTH__API_KEYS",
            "auth.api_keys",
            "IMAGE_GATEWAY__AUTH__API_KEYS",
        ),
        ("IMAGE_GATEWAY_BACKEND", "backend", "IMAGE_GATEWAY__BACKEND"),
        (
            "IMAGE_GATEWAY_SERVER_LISTEN",
            "server.listen",
            "IMAGE_GATEWAY__SERVER__LISTEN",
        ),
    ] {
        let err = Settings::load_from(None, env(&[(var, "sk-x")])).unwrap_err();
        assert_eq!(err.key, key, "{err}");
        assert!(
            err.message.contains(var) && err.message.contains(right),
            "{err}"
        );
        assert!(!err.to_string().contains("sk-x"), "{err}");
    }
}

#[test]
fn other_single_underscore_variables_are_warned_about_and_tool_variables_are_not() {
    let s = Settings::load_from(
        None,
        env(&[
            ("IMAGE_GATEWAY_COLOUR", "blue"),
            ("IMAGE_GATEWAY_CONFIG", "/etc/gw.toml"),
            ("IMAGE_GATEWAY_REQUIRE_REDIS", "1"),
        ]),
    )
    .unwrap();
    assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
    assert!(
        s.warnings[0].contains("IMAGE_GATEWAY_COLOUR"),
        "{:?}",
        s.warnings
    );
}

#[test]
fn choice_words_round_trip_through_the_file_format() {
    fn round_trip<T>(words: &[&str])
    where
        T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        for word in words {
            #[derive(serde::Deserialize, serde::Serialize)]
            struct W<T> {
                v: T,
            }
            let parsed: W<T> = toml::from_str(&format!("v = \"{word}\"")).unwrap();
            let back = toml::to_string(&parsed).unwrap();
            assert_eq!(back.trim(), format!("v = \"{word}\""));
        }
    }
    round_trip::<BackendChoice>(BackendChoice::WORDS);
    round_trip::<FalMode>(FalMode::WORDS);
    round_trip::<CacheMode>(CacheMode::WORDS);
    round_trip::<CacheScope>(CacheScope::WORDS);
    round_trip::<LogFormat>(LogFormat::WORDS);
    round_trip::<Successors>(Successors::WORDS);
}

/// docs/configuration.md lists every choice's words and every numeric
/// range; this prints the table to paste when they disagree.
#[test]
fn the_documented_allowed_values_match_the_code() {
    let mut table = String::from("| key | allowed values |\n|---|---|\n");
    for (key, words) in validate::choices() {
        table.push_str(&format!("| `{key}` | {} |\n", choice::list(words)));
    }
    for range in validate::RANGES {
        let unit = range.unit();
        let sep = if unit.is_empty() { "" } else { " " };
        table.push_str(&format!(
            "| `{}` | {} to {}{sep}{unit} |\n",
            range.key, range.min, range.max
        ));
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/configuration.md")).unwrap();
    assert!(
        doc.contains(&table),
        "docs/configuration.md should hold this table (under \"Allowed values\"):\n{table}"
    );
}

#[test]
fn the_deprecated_cache_enabled_still_turns_the_cache_off_with_a_warning() {
    let off =
        Settings::load_from(None, env(&[("IMAGE_GATEWAY__CACHE__ENABLED", "false")])).unwrap();
    assert_eq!(off.cache.mode, CacheMode::Off);
    assert!(
        off.warnings
            .iter()
            .any(|w| w.contains("cache.mode = \"off\"")),
        "{:?}",
        off.warnings
    );
    let on = Settings::load_from(None, env(&[("IMAGE_GATEWAY__CACHE__ENABLED", "true")])).unwrap();
    assert_eq!(on.cache.mode, CacheMode::All);
    assert_eq!(on.warnings.len(), 1, "{:?}", on.warnings);
    let shown: toml::Table = toml::from_str(&on.to_redacted_toml()).unwrap();
    assert!(!shown["cache"].as_table().unwrap().contains_key("enabled"));
}

#[test]
fn the_database_url_and_admin_key_are_read_and_never_shown() {
    let s = Settings::load_from(
        None,
        env(&[
            (
                "IMAGE_GATEWAY__DATABASE__URL",
                "postgres://gw:db-pass-SECRET@db.internal:5432/gateway?sslmode=require",
            ),
            ("IMAGE_GATEWAY__AUTH__ADMIN_KEY", "admin-key-SECRET-0123"),
        ]),
    )
    .unwrap();
    assert!(s.database.url.is_postgres());
    assert_eq!(
        s.auth.admin_key.as_ref().map(Secret::expose),
        Some("admin-key-SECRET-0123")
    );
    let shown = [s.to_redacted_toml(), format!("{s:?}")];
    for text in &shown {
        assert!(!text.contains("db-pass-SECRET"), "{text}");
        assert!(!text.contains("admin-key-SECRET"), "{text}");
    }
    assert!(shown[0].contains("postgres://[redacted]@db.internal:5432/gateway?sslmode=require"));
}

#[test]
fn bad_database_and_admin_settings_name_their_key() {
    for (var, value, key) in [
        (
            "IMAGE_GATEWAY__DATABASE__URL",
            "mysql://u:db-pass-SECRET@h/db",
            "database.url",
        ),
        (
            "IMAGE_GATEWAY__DATABASE__DATA_DIR",
            " ",
            "database.data_dir",
        ),
        (
            "IMAGE_GATEWAY__DATABASE__MAX_CONNECTIONS",
            "0",
            "database.max_connections",
        ),
        ("IMAGE_GATEWAY__AUTH__ADMIN_KEY", "short", "auth.admin_key"),
    ] {
        let err = Settings::load_from(None, env(&[(var, value)])).unwrap_err();
        assert_eq!(err.key, key, "{var}={value}: {err}");
        assert!(!err.to_string().contains("db-pass-SECRET"), "{err}");
    }
    let err = Settings::load_from(
        None,
        env(&[
            ("IMAGE_GATEWAY__AUTH__API_KEYS", "sk-same-0123456789abcdef"),
            ("IMAGE_GATEWAY__AUTH__ADMIN_KEY", "sk-same-0123456789abcdef"),
        ]),
    )
    .unwrap_err();
    assert_eq!(err.key, "auth.admin_key");
    assert!(!err.to_string().contains("sk-same"), "{err}");
}
