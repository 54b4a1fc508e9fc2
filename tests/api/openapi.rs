//! `openapi.yaml` against the gateway itself: every served route is
//! documented and nothing else is; the generation request's documented
//! fields, enums, ranges and nullability are what the validation code
//! accepts; every error the gateway can answer, and every header a response
//! carries, is documented. (scripts/schemathesis checks live responses
//! against the bodies' schemas.)

// Test code: a failed expectation is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::OnceLock;

use actix_web::ResponseError;
use image_gateway::config::{BackendChoice, ModelSettings, Secret, Settings};
use image_gateway::domain::ModelCatalog;
use image_gateway::error::{ApiError, RateLimitHeaders};
use image_gateway::http::routes;
use image_gateway::openai::validate::{self, OPENAI_SIZES, PlanLimits};
use image_gateway::openai::{KNOWN_FIELDS, parse_generation_body};
use serde_json::{Value, json};
use yaml_rust2::{Yaml, YamlLoader};

use crate::helpers::*;

const HTTP_METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Headers of the HTTP framing itself, which OpenAPI does not describe
/// (`Content-Type` is the media type of the response's `content`).
const FRAMING_HEADERS: [&str; 5] = [
    "content-type",
    "content-length",
    "date",
    "transfer-encoding",
    "connection",
];

/// Headers the edge middleware adds to every response, after the handler.
const EDGE_HEADERS: [&str; 2] = ["x-request-id", "openai-processing-ms"];

fn spec() -> &'static Value {
    static SPEC: OnceLock<Value> = OnceLock::new();
    SPEC.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml");
        let text = std::fs::read_to_string(path).expect("openapi.yaml is readable");
        let docs = YamlLoader::load_from_str(&text).expect("openapi.yaml is valid YAML");
        assert_eq!(docs.len(), 1, "openapi.yaml holds one document");
        to_json(&docs[0])
    })
}

fn to_json(y: &Yaml) -> Value {
    match y {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Integer(i) => json!(i),
        Yaml::Real(r) => json!(r.parse::<f64>().expect("a YAML real is a number")),
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Array(items) => Value::Array(items.iter().map(to_json).collect()),
        Yaml::Hash(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Yaml::String(s) => s.clone(),
                        Yaml::Integer(i) => i.to_string(),
                        Yaml::Boolean(b) => b.to_string(),
                        other => panic!("unsupported YAML key {other:?}"),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        other => panic!("unsupported YAML node {other:?} (aliases are not used)"),
    }
}

/// Follow local `$ref`s (`#/components/...`) until a definition.
fn resolve(v: &Value) -> &Value {
    let mut v = v;
    while let Some(r) = v.get("$ref").and_then(Value::as_str) {
        let pointer = r.strip_prefix('#').expect("only local $refs");
        v = spec()
            .pointer(pointer)
            .unwrap_or_else(|| panic!("dangling $ref {r}"));
    }
    v
}

fn schema(name: &str) -> &'static Value {
    resolve(&spec()["components"]["schemas"][name])
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected a list, got {v}"))
        .iter()
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect()
}

/// `{model}` and `{name}` alike: only the shape of a template matters.
fn normalise_template(path: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push_str("{}");
            }
            '}' => in_param = false,
            _ if in_param => {}
            _ => out.push(c),
        }
    }
    out
}

fn documented_routes() -> BTreeSet<(String, String)> {
    let paths = spec()["paths"].as_object().expect("paths");
    paths
        .iter()
        .flat_map(|(path, item)| {
            let item = resolve(item);
            HTTP_METHODS
                .iter()
                .filter(|m| item.get(**m).is_some())
                .map(|m| (m.to_uppercase(), normalise_template(path)))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn every_served_route_is_documented_and_every_documented_route_is_served() {
    let served: BTreeSet<(String, String)> = routes::served(true)
        .into_iter()
        .map(|r| (r.method.to_owned(), normalise_template(&r.path)))
        .collect();
    let documented = documented_routes();

    let missing: Vec<_> = served.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&served).collect();
    assert!(
        missing.is_empty(),
        "served but missing from openapi.yaml: {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "in openapi.yaml but not served: {stale:?}"
    );
}

#[test]
fn the_spec_names_this_version_of_the_gateway() {
    assert_eq!(spec()["openapi"], "3.1.0");
    assert_eq!(spec()["info"]["version"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn the_routes_documented_as_open_are_the_route_tables_open_routes() {
    // The middleware lets these through without a key (metrics only when
    // configured public, so it is documented as secured).
    let open: BTreeSet<String> = spec()["paths"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, item)| {
            HTTP_METHODS.iter().any(|m| {
                resolve(item)
                    .get(*m)
                    .and_then(|op| op.get("security"))
                    .is_some_and(|s| s.as_array().is_some_and(Vec::is_empty))
            })
        })
        .map(|(p, _)| normalise_template(p))
        .collect();
    let table: BTreeSet<String> = routes::served(true)
        .into_iter()
        .filter(|r| r.access == routes::Access::Open)
        .map(|r| normalise_template(&r.path))
        .collect();
    assert_eq!(open, table);
    // And what the table opens is only probes and image files.
    let expected: BTreeSet<String> = [
        "/healthz",
        "/readyz",
        "/v1/images/files/{}",
        "/images/files/{}",
    ]
    .map(str::to_owned)
    .into();
    assert_eq!(table, expected);
    assert_eq!(spec()["security"], json!([{"bearerAuth": []}]));
}

// ---------------------------------------------------------------------------
// The generation request: documented rules == the validation code's rules.

fn catalog() -> ModelCatalog {
    ModelSettings::default().catalog().expect("default models")
}

/// `Ok` if the gateway accepts the body, else the error's `param`.
fn verdict(body: &Value) -> Result<(), Option<String>> {
    let limits = PlanLimits {
        max_prompt_chars: Settings::default().server.max_prompt_chars,
    };
    let err = |e: ApiError| e.param().map(str::to_owned);
    let parsed = parse_generation_body(body.to_string().as_bytes()).map_err(err)?;
    validate::plan(&parsed.request, parsed.unknown_fields, &catalog(), limits)
        .map(|_| ())
        .map_err(err)
}

fn with(field: &str, value: Value) -> Value {
    let mut body = json!({"prompt": "a lighthouse"});
    body[field] = value;
    body
}

fn request_properties() -> &'static serde_json::Map<String, Value> {
    schema("ImageGenerationRequest")["properties"]
        .as_object()
        .expect("request properties")
}

fn admits_null(prop: &Value) -> bool {
    let prop = resolve(prop);
    match &prop["type"] {
        Value::Array(types) => types.iter().any(|t| t == "null"),
        Value::String(t) => t == "null",
        _ => prop["anyOf"]
            .as_array()
            .is_some_and(|alts| alts.iter().any(admits_null)),
    }
}

#[test]
fn the_documented_fields_are_the_fields_the_gateway_knows() {
    let documented: BTreeSet<&str> = request_properties().keys().map(String::as_str).collect();
    let known: BTreeSet<&str> = KNOWN_FIELDS.iter().copied().collect();
    assert_eq!(documented, known);
    assert_eq!(
        schema("ImageGenerationRequest")["additionalProperties"],
        true,
        "unknown fields are accepted"
    );
    assert!(verdict(&with("not_an_openai_field", json!({"a": [1]}))).is_ok());
}

#[test]
fn only_prompt_is_required_and_every_other_field_accepts_null() {
    assert_eq!(
        strings(&schema("ImageGenerationRequest")["required"]),
        ["prompt"]
    );
    assert_eq!(verdict(&json!({})), Err(Some("prompt".into())));
    assert_eq!(
        verdict(&json!({"prompt": null})),
        Err(Some("prompt".into()))
    );
    assert!(!admits_null(&request_properties()["prompt"]));

    for (field, prop) in request_properties() {
        if field == "prompt" {
            continue;
        }
        assert!(admits_null(prop), "{field} is documented as nullable");
        assert_eq!(verdict(&with(field, Value::Null)), Ok(()), "{field}: null");
    }
}

/// OpenAI's own values per enum field (PROTOCOLS.md): each is either
/// documented and accepted, or undocumented and refused.
const OPENAI_VALUES: &[(&str, &[&str])] = &[
    ("response_format", &["url", "b64_json"]),
    // gpt-image-2.6's gif and svg are OpenAI's too: refused here.
    ("output_format", &["png", "jpeg", "webp", "gif", "svg"]),
    (
        "quality",
        &[
            "auto", "standard", "hd", "low", "medium", "high", "xhigh", "max",
        ],
    ),
    ("complexity", &["low", "medium", "high"]),
    ("style", &["vivid", "natural"]),
    ("background", &["auto", "transparent", "opaque"]),
    ("moderation", &["auto", "low"]),
];

#[test]
fn documented_enums_are_exactly_the_values_the_gateway_accepts() {
    let enum_fields: BTreeSet<&str> = request_properties()
        .iter()
        .filter(|(_, p)| resolve(p).get("enum").is_some())
        .map(|(f, _)| f.as_str())
        .collect();
    let covered: BTreeSet<&str> = OPENAI_VALUES.iter().map(|(f, _)| *f).collect();
    assert_eq!(enum_fields, covered, "every enum field is checked below");

    for (field, openai) in OPENAI_VALUES {
        let documented = strings(&resolve(&request_properties()[*field])["enum"]);
        for value in &documented {
            assert_eq!(
                verdict(&with(field, json!(value))),
                Ok(()),
                "{field}: {value}"
            );
        }
        let candidates = openai
            .iter()
            .map(|s| s.to_string())
            .chain(documented.iter().map(|v| v.to_uppercase()))
            .chain(["bogus".to_owned(), String::new()]);
        for value in candidates.filter(|v| !documented.contains(v)) {
            assert_eq!(
                verdict(&with(field, json!(value))),
                Err(Some(field.to_string())),
                "{field}: {value:?} is not documented, so it must be refused"
            );
        }
    }
}

#[test]
fn the_size_enum_is_openais_and_other_sizes_follow_the_documented_rule() {
    let documented = strings(&schema("OpenAISize")["enum"]);
    let gateway: Vec<&str> = OPENAI_SIZES.to_vec();
    assert_eq!(documented, gateway);
    for size in &documented {
        assert_eq!(verdict(&with("size", json!(size))), Ok(()), "{size}");
    }
    // Free sizes: the pattern is the documented shape; the side and ratio
    // limits are in its description.
    let free = &request_properties()["size"]["anyOf"][1];
    assert_eq!(free["pattern"], "^[0-9]{1,5}[xX][0-9]{1,5}$");
    for ok in ["64x64", "4096x4096", "300X200", "4096x1366", "01024x768"] {
        assert_eq!(verdict(&with("size", json!(ok))), Ok(()), "{ok}");
    }
    for refused in [
        "0x0",
        "63x64",
        "4097x4096",
        "4096x1365",
        "99999x1",
        "-5x10",
        "NaNxNaN",
        "1024",
        "1024x1024x1",
        "１０２４x1024",
        " 1024x1024",
        "",
        "123456x1",
    ] {
        assert_eq!(
            verdict(&with("size", json!(refused))),
            Err(Some("size".into())),
            "{refused:?}"
        );
    }
}

#[test]
fn documented_integer_ranges_are_the_ranges_the_gateway_accepts() {
    let mut checked = Vec::new();
    for (field, prop) in request_properties() {
        let prop = resolve(prop);
        let is_integer = prop["type"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t == "integer"));
        if !is_integer {
            continue;
        }
        let (Some(min), Some(max)) = (prop["minimum"].as_i64(), prop["maximum"].as_i64()) else {
            panic!("integer field {field} documents its minimum and maximum");
        };
        for ok in [min, max] {
            assert_eq!(verdict(&with(field, json!(ok))), Ok(()), "{field}: {ok}");
        }
        for refused in [json!(min - 1), json!(max + 1), json!(1.5), json!("1")] {
            assert_eq!(
                verdict(&with(field, refused.clone())),
                Err(Some(field.clone())),
                "{field}: {refused}"
            );
        }
        checked.push(field.as_str());
    }
    assert_eq!(
        checked,
        [
            "frame_duration_ms",
            "n",
            "output_compression",
            "partial_images",
            "seed"
        ],
        "the spec's integer fields"
    );
    assert_eq!(
        request_properties()["n"]["maximum"],
        validate::MAX_IMAGES,
        "n's maximum is the gateway's"
    );
}

#[test]
fn stream_must_be_a_boolean() {
    assert_eq!(verdict(&with("stream", json!(true))), Ok(()));
    assert_eq!(verdict(&with("stream", json!(false))), Ok(()));
    assert_eq!(
        verdict(&with("stream", json!("true"))),
        Err(Some("stream".into()))
    );
}

/// The `pattern` character class for "not Unicode White_Space", derived from
/// what `str::trim` strips: runs of 3+ code points as ranges.
fn not_whitespace_class() -> String {
    let spell = |c: char| match c {
        '\t' => "\\t".to_owned(),
        '\n' => "\\n".to_owned(),
        '\r' => "\\r".to_owned(),
        ' ' => " ".to_owned(),
        c => format!("\\u{:04X}", c as u32),
    };
    let whitespace: Vec<char> = ('\0'..=char::MAX).filter(|c| c.is_whitespace()).collect();
    let mut class = String::from("[^");
    let mut i = 0;
    while i < whitespace.len() {
        let mut j = i;
        while j + 1 < whitespace.len() && whitespace[j + 1] as u32 == whitespace[j] as u32 + 1 {
            j += 1;
        }
        if j - i >= 2 {
            class.push_str(&format!(
                "{}-{}",
                spell(whitespace[i]),
                spell(whitespace[j])
            ));
        } else {
            for c in &whitespace[i..=j] {
                class.push_str(&spell(*c));
            }
        }
        i = j + 1;
    }
    class.push(']');
    class
}

#[test]
fn prompt_rules_match_the_gateway() {
    let prompt = resolve(&request_properties()["prompt"]);
    let max = Settings::default().server.max_prompt_chars;
    assert_eq!(prompt["maxLength"], max, "the default max_prompt_chars");
    assert_eq!(prompt["minLength"], 1);
    assert_eq!(prompt["pattern"], not_whitespace_class());

    // Characters, not bytes, as JSON Schema counts them.
    assert_eq!(verdict(&json!({"prompt": "é".repeat(max)})), Ok(()));
    assert_eq!(
        verdict(&json!({"prompt": "é".repeat(max + 1)})),
        Err(Some("prompt".into()))
    );
    for blank in ["", " ", "\t\n", "\u{3000}\u{2028}", "\u{85}"] {
        assert_eq!(
            verdict(&json!({"prompt": blank})),
            Err(Some("prompt".into())),
            "{blank:?}"
        );
    }
    // Outside White_Space, so the pattern admits them and so does the gateway.
    for visible in ["x", "\u{200B}", "\u{FEFF}", "\u{1C}"] {
        assert_eq!(verdict(&json!({"prompt": visible})), Ok(()), "{visible:?}");
    }
}

#[test]
fn documented_model_names_resolve_and_unknown_ones_are_404() {
    let catalog = catalog();
    for name in strings(&request_properties()["model"]["examples"]) {
        assert!(catalog.resolve(&name).is_some(), "{name}");
    }
    assert_eq!(
        verdict(&with("model", json!("midjourney"))),
        Err(Some("model".into()))
    );
}

#[test]
fn documented_delivered_sizes_are_imagens() {
    let documented = strings(&schema("DeliveredSize")["examples"]);
    let catalog = catalog();
    let imagen = catalog.profile("fal-ai/imagen4/preview/fast").unwrap();
    let sizes: Vec<String> = imagen
        .input
        .sizes(None)
        .iter()
        .map(|(w, h)| format!("{w}x{h}"))
        .collect();
    assert_eq!(documented, sizes);
}

// ---------------------------------------------------------------------------
// Errors and headers.

/// Every `ApiError` variant once. The match below stops compiling when a
/// variant is added, so this list cannot silently fall behind.
fn every_error() -> Vec<ApiError> {
    fn _exhaustive(e: &ApiError) {
        match e {
            ApiError::InvalidRequest { .. }
            | ApiError::PayloadTooLarge { .. }
            | ApiError::RequestTimeout
            | ApiError::Unauthorized { .. }
            | ApiError::ModelNotFound { .. }
            | ApiError::NotFound { .. }
            | ApiError::Unsupported { .. }
            | ApiError::ContentPolicy { .. }
            | ApiError::ModelNotAllowed { .. }
            | ApiError::InsufficientQuota { .. }
            | ApiError::StoreUnavailable
            | ApiError::RateLimited { .. }
            | ApiError::Overloaded { .. }
            | ApiError::UpstreamRateLimited { .. }
            | ApiError::UpstreamAuth
            | ApiError::Upstream { .. }
            | ApiError::UpstreamUnconfirmed { .. }
            | ApiError::UpstreamUnavailable { .. }
            | ApiError::UpstreamTimeout { .. }
            | ApiError::ShuttingDown
            | ApiError::Internal => {}
            // Only ever "sent" to a client that already hung up (logged as
            // 499); no client can receive it, so the spec need not list it.
            ApiError::ClientClosedRequest => {}
            // Renders as its cause, which is listed.
            ApiError::EndpointUnavailable { .. } => {}
        }
    }
    let limit = |kind| RateLimitHeaders {
        kind,
        limit: 60,
        remaining: 0,
        reset_seconds: 1.5,
    };
    vec![
        ApiError::invalid("bad n", "n"),
        ApiError::invalid_body("not JSON"),
        ApiError::PayloadTooLarge { limit: 10 },
        ApiError::RequestTimeout,
        ApiError::Unauthorized { message: "no key" },
        ApiError::ModelNotFound { model: "x".into() },
        ApiError::NotFound {
            message: "No such image".into(),
        },
        ApiError::Unsupported {
            message: "no edits",
        },
        ApiError::ContentPolicy {
            message: "flagged".into(),
        },
        ApiError::ModelNotAllowed {
            model: "imagen-4-ultra".into(),
        },
        ApiError::InsufficientQuota {
            message: "over budget".into(),
        },
        ApiError::StoreUnavailable,
        ApiError::RateLimited {
            retry_after_seconds: 2,
            limit: limit("requests"),
        },
        ApiError::RateLimited {
            retry_after_seconds: 2,
            limit: limit("images"),
        },
        ApiError::Overloaded {
            retry_after_seconds: 1,
        },
        ApiError::UpstreamRateLimited {
            retry_after_seconds: 5,
        },
        ApiError::UpstreamAuth,
        ApiError::Upstream {
            message: "fal failed".into(),
        },
        ApiError::UpstreamUnconfirmed {
            message: "fal did not answer; not repeated".into(),
        },
        ApiError::UpstreamUnavailable {
            message: "no runner".into(),
            retry_after_seconds: 2,
        },
        ApiError::deadline(3, "; the upstream job was cancelled"),
        ApiError::UpstreamTimeout {
            message: "fal.ai timed the job out (startup_timeout).".into(),
        },
        ApiError::ShuttingDown,
        ApiError::Internal,
    ]
}

/// Whether a value satisfies a `const` / `enum` constraint (absent: any).
fn allowed(constraint: &Value, value: &Value) -> bool {
    if let Some(c) = constraint.get("const") {
        return c == value;
    }
    if let Some(e) = constraint.get("enum").and_then(Value::as_array) {
        return e.contains(value);
    }
    true
}

/// The `error` constraints of a documented error response: the shared
/// `ErrorResponse` plus the per-response `allOf` narrowing.
fn admits_error(response: &Value, body: &Value) -> bool {
    let Some(body_schema) = response.pointer("/content/application~1json/schema") else {
        return false;
    };
    let body_schema = resolve(body_schema);
    let parts: Vec<&Value> = match body_schema.get("allOf").and_then(Value::as_array) {
        Some(parts) => parts.iter().map(resolve).collect(),
        None => vec![body_schema],
    };
    if !parts
        .iter()
        .any(|p| std::ptr::eq(*p, schema("ErrorResponse")))
    {
        return false;
    }
    let error = &body["error"];
    parts.iter().all(|p| {
        let Some(fields) = p.pointer("/properties/error") else {
            return true;
        };
        let fields = resolve(fields);
        let props = &fields["properties"];
        ["type", "code", "param"].iter().all(|k| {
            props
                .get(*k)
                .is_none_or(|c| allowed(resolve(c), &error[*k]))
        })
    })
}

/// Every documented (operation, response) for a status.
fn responses_for(status: u16) -> Vec<(String, &'static Value)> {
    let mut out = Vec::new();
    for (path, item) in spec()["paths"].as_object().unwrap() {
        for m in HTTP_METHODS {
            if let Some(op) = resolve(item).get(m)
                && let Some(r) = op["responses"].get(status.to_string())
            {
                out.push((format!("{} {path}", m.to_uppercase()), resolve(r)));
            }
        }
    }
    out
}

/// Headers sent but not documented for the response, and documented
/// required headers not sent. `edge_added`: whether the edge middleware's
/// headers are in `sent` yet (they are not on a bare `error_response()`).
fn header_mismatches(response: &Value, sent: &[String], edge_added: bool) -> Vec<String> {
    let documented: Vec<(String, bool)> = response["headers"]
        .as_object()
        .map(|h| {
            h.iter()
                .map(|(name, def)| (name.to_ascii_lowercase(), resolve(def)["required"] == true))
                .collect()
        })
        .unwrap_or_default();
    let mut problems = Vec::new();
    for name in sent {
        if !FRAMING_HEADERS.contains(&name.as_str()) && !documented.iter().any(|(d, _)| d == name) {
            problems.push(format!("sends undocumented header `{name}`"));
        }
    }
    for (name, required) in &documented {
        let added_later = !edge_added && EDGE_HEADERS.contains(&name.as_str());
        if *required && !added_later && !sent.contains(name) {
            problems.push(format!("lacks required header `{name}`"));
        }
    }
    problems
}

#[test]
fn every_error_the_gateway_answers_is_documented_with_its_headers() {
    for err in every_error() {
        let res = err.error_response();
        let status = res.status().as_u16();
        let body: Value = serde_json::from_str(&err.body_json()).unwrap();
        let candidates = responses_for(status);
        let matching: Vec<_> = candidates
            .iter()
            .filter(|(_, r)| admits_error(r, &body))
            .collect();
        assert!(
            !matching.is_empty(),
            "{err:?}: no documented {status} response admits {body}"
        );
        for (op, response) in matching {
            let sent: Vec<String> = res
                .headers()
                .keys()
                .map(|k| k.as_str().to_owned())
                .collect();
            let problems = header_mismatches(response, &sent, false);
            assert!(
                problems.is_empty(),
                "{err:?} as {op} {status}: {problems:?}"
            );
        }
    }
}

#[test]
fn the_documented_error_codes_are_the_gateways() {
    let documented: BTreeSet<Option<String>> = schema("Error")["properties"]["code"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().map(str::to_owned))
        .collect();
    let sent: BTreeSet<Option<String>> = every_error()
        .iter()
        .map(|e| e.code().map(str::to_owned))
        .collect();
    assert_eq!(documented, sent);
    let types: BTreeSet<String> = strings(&schema("Error")["properties"]["type"]["enum"])
        .into_iter()
        .collect();
    let sent: BTreeSet<String> = every_error()
        .iter()
        .map(|e| e.error_type().to_owned())
        .collect();
    assert_eq!(types, sent);
}

/// One live request and the documented operation it belongs to.
struct Probe {
    method: &'static str,
    path: String,
    template: &'static str,
    key: bool,
    headers: Vec<(&'static str, &'static str)>,
    body: Option<Value>,
}

impl Probe {
    fn get(path: impl Into<String>, template: &'static str) -> Self {
        Self {
            method: "GET",
            path: path.into(),
            template,
            key: true,
            headers: vec![],
            body: None,
        }
    }

    fn post(path: &str, template: &'static str, body: Value) -> Self {
        Self {
            method: "POST",
            path: path.into(),
            template,
            key: true,
            headers: vec![],
            body: Some(body),
        }
    }
}

#[actix_web::test]
async fn every_header_a_live_response_carries_is_documented() {
    let app = spawn_app_with(|s| {
        s.backend = BackendChoice::Local;
        s.fal.key = None;
        s.auth.api_keys = vec![Secret::new("sk-spec")];
        crate::keys::with_admin(s);
    })
    .await;
    let admin = ("authorization", "Bearer admin-SECRET-0123456789abcdef");
    assert_eq!(admin.1, format!("Bearer {}", crate::keys::ADMIN_KEY));
    let (key_id, limited_key) = app
        .make_key(json!({"name": "spec", "models": ["imagen-4"]}))
        .await;
    let limited_key: &'static str = Box::leak(format!("Bearer {limited_key}").into_boxed_str());
    let key_path: &'static str = Box::leak(format!("/admin/v1/keys/{key_id}").into_boxed_str());
    let as_admin = |p: Probe| Probe {
        key: false,
        headers: vec![admin],
        ..p
    };
    let generation = json!({"prompt": "documented headers", "quality": "hd", "extra_field": 1});
    let mut probes = vec![
        Probe::post(
            "/v1/images/generations",
            "/v1/images/generations",
            generation.clone(),
        ),
        // The same again: a cache hit, with `age`.
        Probe::post("/images/generations", "/images/generations", generation),
        Probe::post(
            "/v1/images/generations",
            "/v1/images/generations",
            json!({"prompt": "streamed headers", "stream": true, "style": "vivid"}),
        ),
        Probe::post(
            "/v1/images/generations",
            "/v1/images/generations",
            json!({"prompt": "x", "n": 0}),
        ),
        Probe::post(
            "/v1/images/generations",
            "/v1/images/generations",
            json!({"prompt": "x", "model": "nope"}),
        ),
        Probe::post("/v1/images/edits", "/v1/images/edits", json!({})),
        Probe::post("/images/variations", "/images/variations", json!({})),
        Probe::get("/v1/models", "/v1/models"),
        Probe::get("/models/imagen-4", "/models/{model}"),
        Probe::get("/v1/models/nope", "/v1/models/{model}"),
        Probe::get(
            "/images/files/0123456789abcdef0123456789abcdef.png",
            "/images/files/{name}",
        ),
        Probe::get("/healthz", "/healthz"),
        Probe::get("/readyz", "/readyz"),
        Probe::get("/metrics", "/metrics"),
        // A key limited to another model: 403.
        Probe {
            key: false,
            headers: vec![("authorization", limited_key)],
            ..Probe::post(
                "/v1/images/generations",
                "/v1/images/generations",
                json!({"prompt": "x", "model": "imagen-4-fast"}),
            )
        },
        // The admin API.
        as_admin(Probe::post(
            "/admin/v1/keys",
            "/admin/v1/keys",
            json!({"name": "probe"}),
        )),
        as_admin(Probe::post(
            "/admin/v1/keys",
            "/admin/v1/keys",
            json!({"name": ""}),
        )),
        as_admin(Probe::get("/admin/v1/keys", "/admin/v1/keys")),
        as_admin(Probe::get(key_path, "/admin/v1/keys/{id}")),
        as_admin(Probe::get("/admin/v1/keys/key_nope", "/admin/v1/keys/{id}")),
        as_admin(Probe {
            method: "PATCH",
            ..Probe::post(key_path, "/admin/v1/keys/{id}", json!({"budget_usd": 1}))
        }),
        as_admin(Probe {
            method: "DELETE",
            ..Probe::get(key_path, "/admin/v1/keys/{id}")
        }),
        as_admin(Probe::get(
            "/admin/v1/spend?group_by=model",
            "/admin/v1/spend",
        )),
        as_admin(Probe::get(
            "/admin/v1/spend?group_by=hour",
            "/admin/v1/spend",
        )),
        Probe {
            key: true,
            ..Probe::get("/admin/v1/spend", "/admin/v1/spend")
        },
        Probe {
            key: false,
            ..Probe::get("/v1/models", "/v1/models")
        },
        Probe {
            key: false,
            headers: vec![("x-request-id", "my-own-id")],
            ..Probe::post(
                "/v1/images/generations",
                "/v1/images/generations",
                json!({"prompt": "x"}),
            )
        },
    ];
    let mut seen = BTreeSet::new();
    let mut i = 0;
    while i < probes.len() {
        let p = &probes[i];
        let method = reqwest::Method::from_bytes(p.method.as_bytes()).unwrap();
        let mut req = app.client.request(method, app.url(&p.path));
        if p.key {
            req = req.header("authorization", "Bearer sk-spec");
        }
        for (k, v) in &p.headers {
            req = req.header(*k, *v);
        }
        if let Some(body) = &p.body {
            req = req
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let res = req.send().await.expect("request is sent");
        let status = res.status().as_u16();
        let sent: Vec<String> = res
            .headers()
            .keys()
            .map(|k| k.as_str().to_owned())
            .collect();
        let request_id = res.headers().get("x-request-id").cloned();
        let body = res.bytes().await.expect("body");
        let label = format!("{} {} -> {status}", p.method, p.path);
        let op = &spec()["paths"][p.template][p.method.to_lowercase()];
        let response = op["responses"]
            .get(status.to_string())
            .map(resolve)
            .unwrap_or_else(|| panic!("{label}: status not documented for {}", p.template));
        let problems = header_mismatches(response, &sent, true);
        assert!(problems.is_empty(), "{label}: {problems:?}");
        if let Some((_, id)) = p.headers.iter().find(|(k, _)| *k == "x-request-id") {
            assert_eq!(
                request_id.unwrap(),
                *id,
                "{label}: the client's id is echoed"
            );
        }
        seen.extend(sent);
        if i == 0 {
            // Follow the first generation's file link (open: no key).
            let v: Value = serde_json::from_slice(&body).expect("JSON");
            let url = v["data"][0]["url"].as_str().expect("a url answer");
            let path = url
                .strip_prefix(&app.address)
                .expect("a link to this gateway");
            probes.push(Probe {
                key: false,
                ..Probe::get(path, "/v1/images/files/{name}")
            });
        }
        i += 1;
    }
    // The probes reached every optional header they were meant to.
    for h in [
        "age",
        "x-image-gateway-ignored-fields",
        "x-image-gateway-cost-usd",
        "x-accel-buffering",
        "cache-control",
        "www-authenticate",
        "x-should-retry",
    ] {
        assert!(seen.contains(h), "no probe saw `{h}`: {seen:?}");
    }
}

#[actix_web::test]
async fn streamed_answers_report_ignored_fields_like_json_answers() {
    // x-image-gateway-ignored-fields is documented on every generation
    // answer; a stream that had to wait for its images must carry it too.
    let app = spawn_app_with(|s| {
        s.backend = BackendChoice::Local;
        s.fal.key = None;
    })
    .await;
    for body in [
        json!({"prompt": "ignored fields, json", "style": "vivid"}),
        json!({"prompt": "ignored fields, stream", "style": "vivid", "stream": true}),
    ] {
        let res = app.post_generation(body.clone()).await;
        assert_eq!(res.status(), 200);
        assert_eq!(
            res.headers()
                .get("x-image-gateway-ignored-fields")
                .and_then(|v| v.to_str().ok()),
            Some("style"),
            "{body}"
        );
    }
}
