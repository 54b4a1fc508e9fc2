//! Property tests of request parsing and mapping: whatever a client sends,
//! the answer is a plan or an OpenAI-shaped 4xx naming a real field, never a
//! panic; and valid plans keep the mapping's invariants.

use actix_web::ResponseError;
use image_gateway::cache::CacheKey;
use image_gateway::config::ModelSettings;
use image_gateway::domain::ModelCatalog;
use image_gateway::domain::profile::{SizeChoice, SizeInput};
use image_gateway::domain::{Quality, SizeRequest};
use image_gateway::openai::validate::{self, PlanLimits};
use image_gateway::openai::{KNOWN_FIELDS, parse_generation_body};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

fn catalog() -> ModelCatalog {
    ModelSettings::default().catalog().unwrap()
}

const LIMITS: PlanLimits = PlanLimits {
    max_prompt_chars: 200,
};

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "\\PC{0,24}".prop_map(Value::String),
        prop_oneof![
            Just("1024x1024"),
            Just("1792x1024"),
            Just("auto"),
            Just("b64_json"),
            Just("url"),
            Just("png"),
            Just("webp"),
            Just("jpeg"),
            Just("gpt-image-1"),
            Just("imagen-4"),
            Just("hd"),
            Just("vivid"),
            Just("opaque"),
            Just("low"),
            Just("0x0"),
            Just("640x480"),
        ]
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A request object drawing mostly on the real field names.
fn any_request() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        4 => prop::sample::select(KNOWN_FIELDS.to_vec()).prop_map(str::to_owned),
        1 => "[a-z_]{1,12}",
    ];
    prop::collection::btree_map(key, any_json(), 0..8).prop_map(|m| {
        let mut map: Map<String, Value> = m.into_iter().collect();
        // Usually a prompt, so plans are reached often.
        if !map.contains_key("prompt") && !map.len().is_multiple_of(3) {
            map.insert("prompt".into(), json!("a lighthouse"));
        }
        Value::Object(map)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_and_fail_as_400(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Err(e) = parse_generation_body(&bytes) {
            prop_assert_eq!(e.status_code().as_u16(), 400);
            let body: Value = serde_json::from_str(&e.body_json()).unwrap();
            prop_assert!(body["error"]["message"].is_string());
        }
    }

    #[test]
    fn arbitrary_requests_plan_or_fail_with_a_known_param(req in any_request()) {
        let bytes = serde_json::to_vec(&req).unwrap();
        let result = parse_generation_body(&bytes)
            .and_then(|p| validate::plan(&p.request, p.unknown_fields, &catalog(), LIMITS));
        match result {
            Ok(plan) => {
                let jobs = plan.jobs();
                prop_assert_eq!(jobs.iter().map(|j| u32::from(j.num_images)).sum::<u32>(), u32::from(plan.n));
                prop_assert!(jobs.iter().all(|j| (1..=4).contains(&j.num_images)));
                prop_assert!((1..=10).contains(&plan.n));
                prop_assert_eq!(CacheKey::of(&plan, None), CacheKey::of(&plan, None));
            }
            Err(e) => {
                let status = e.status_code().as_u16();
                prop_assert!(status == 400 || status == 404, "status {} for {}", status, req);
                if let Some(param) = e.param() {
                    prop_assert!(KNOWN_FIELDS.contains(&param), "param {} for {}", param, req);
                }
            }
        }
    }

    #[test]
    fn any_size_string_maps_or_fails_on_size(size in "[-+0-9a-zA-Z. x]{0,14}") {
        match validate::size_request(Some(&size)) {
            Ok(_) => {}
            Err(e) => prop_assert_eq!(e.param(), Some("size")),
        }
    }

    #[test]
    fn valid_dimensions_map_to_each_endpoints_nearest_ratio_in_log_space(w in 64u32..=4096, h in 64u32..=4096) {
        let result = validate::size_request(Some(&format!("{w}x{h}")));
        let ratio = f64::from(w.max(h)) / f64::from(w.min(h));
        if ratio > 3.0 {
            prop_assert!(result.is_err());
            return Ok(());
        }
        let size = result.unwrap();
        prop_assert_eq!(size, SizeRequest::Exact { width: w, height: h });
        let catalog = catalog();
        for endpoint in ["fal-ai/imagen4/preview/fast", "fal-ai/nano-banana-2", "fal-ai/nano-banana-pro"] {
            let input = &catalog.profile(endpoint).unwrap().input;
            let SizeInput::AspectRatio { ratios, .. } = &input.size else { unreachable!() };
            let tier = input.tier_for(size.longer_side(), Quality::Auto);
            let (SizeChoice::AspectRatio(chosen), _) = input.size_for(size, tier) else { unreachable!() };
            let distance = |value: &str| {
                let option = ratios.iter().find(|r| r.value == value).unwrap();
                let (rw, rh) = option.nominal();
                ((f64::from(w) / f64::from(h)).ln() - (f64::from(rw) / f64::from(rh)).ln()).abs()
            };
            for other in ratios {
                prop_assert!(
                    distance(&chosen) <= distance(&other.value) + 1e-12,
                    "{}x{} on {} -> {}, but {} is nearer", w, h, endpoint, chosen, other.value
                );
            }
        }
    }
}
