//! The `POST /v1/images/generations` body as the official SDKs send it,
//! parsed strictly enough to name the bad field (`param`) and loosely enough
//! that `null` and unknown fields are accepted.

use std::sync::LazyLock;

use serde::Deserialize;

use crate::error::ApiError;

/// The request body. Every field is optional at this stage so a missing or
/// `null` value can be told apart from a wrong one; [`super::validate`] decides.
#[derive(Debug, Default, Deserialize)]
pub struct ImageGenerationRequest {
    pub prompt: Option<String>,
    pub model: Option<String>,
    pub n: Option<i64>,
    pub size: Option<String>,
    pub response_format: Option<String>,
    pub output_format: Option<String>,
    pub output_compression: Option<i64>,
    pub quality: Option<String>,
    pub style: Option<String>,
    pub background: Option<String>,
    pub moderation: Option<String>,
    pub stream: Option<bool>,
    pub partial_images: Option<i64>,
    pub user: Option<String>,
    /// Extension: passed to fal as `seed` for reproducible images.
    pub seed: Option<i64>,
    /// OpenAI 2026: the end-user id that replaces `user` (accepted, unused).
    pub safety_identifier: Option<String>,
    /// OpenAI 2026 (gpt-image-2.6): `low`, `medium` or `high`.
    pub complexity: Option<String>,
    /// OpenAI 2026: frames of animated output (refused: no model here makes it).
    pub frame_count: Option<i64>,
    /// OpenAI 2026: frame time of animated output (accepted, unused).
    pub frame_duration_ms: Option<i64>,
}

/// Fields this gateway knows: the fields of [`ImageGenerationRequest`], read
/// from its `Deserialize` so the list cannot drift from the struct. Anything
/// else in a body is accepted and reported in `x-image-gateway-ignored-fields`.
pub static KNOWN_FIELDS: LazyLock<&'static [&'static str]> =
    LazyLock::new(struct_fields::<ImageGenerationRequest>);

/// Unknown field names reported back at most, and their longest length.
const MAX_REPORTED_UNKNOWN: usize = 16;
const MAX_REPORTED_NAME_LEN: usize = 64;

/// A parsed body plus the names of unknown fields it carried.
#[derive(Debug)]
pub struct ParsedRequest {
    pub request: ImageGenerationRequest,
    pub unknown_fields: Vec<String>,
}

/// Parse a JSON body into the request, turning every failure into a 400 that
/// says what was wrong and, where it applies, which field (`param`).
pub fn parse_generation_body(body: &[u8]) -> Result<ParsedRequest, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid_body(
            "The request body is empty: send a JSON object with at least `prompt`.",
        ));
    }
    if std::str::from_utf8(body).is_err() {
        return Err(ApiError::invalid_body(
            "The request body is not valid UTF-8 JSON.",
        ));
    }
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid_body(format!(
            "We could not parse the JSON body of your request ({}). The body must be a JSON object such as {{\"prompt\": \"a lighthouse at dusk\"}}.",
            describe_json_error(&e)
        ))
    })?;
    let serde_json::Value::Object(map) = &value else {
        return Err(ApiError::invalid_body(
            "The request body must be a JSON object.",
        ));
    };
    let unknown_fields = map
        .keys()
        .filter(|k| !KNOWN_FIELDS.contains(&k.as_str()))
        .take(MAX_REPORTED_UNKNOWN)
        .map(|k| sanitize_field_name(k))
        .collect();
    let request: ImageGenerationRequest = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let field = path.split('.').next().unwrap_or("");
        match KNOWN_FIELDS.iter().find(|k| **k == field) {
            Some(param) => ApiError::invalid(
                format!("Invalid type for '{param}': {}.", expected_type(&inner)),
                param,
            ),
            None => ApiError::invalid_body(format!("Invalid request body: {inner}.")),
        }
    })?;
    Ok(ParsedRequest {
        request,
        unknown_fields,
    })
}

/// serde_json's message without echoing the client's text back verbatim.
fn describe_json_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Eof => "the body ended early",
        Category::Syntax if e.to_string().contains("recursion limit") => "it is nested too deeply",
        Category::Syntax if e.to_string().contains("number out of range") => {
            "a number is out of range"
        }
        Category::Syntax => "syntax error",
        Category::Data => "invalid data",
        Category::Io => "read error",
    };
    format!("{what} at line {} column {}", e.line(), e.column())
}

/// serde's "invalid type: string \"2\", expected i64" in OpenAI's words.
fn expected_type(inner: &str) -> String {
    let expected = match inner.rsplit_once("expected ").map(|(_, e)| e) {
        Some("i64" | "u32" | "u8" | "an integer") => "an integer",
        Some("a boolean") => "a boolean",
        _ => "a string",
    };
    let got = inner
        .strip_prefix("invalid type: ")
        .and_then(|rest| rest.split(',').next())
        .map(|g| g.split(' ').next().unwrap_or(g).to_owned());
    match got {
        Some(got) => format!("expected {expected}, got {got}"),
        None => format!("expected {expected}"),
    }
}

/// The field names of a struct with a derived `Deserialize`, as serde sees
/// them (renames applied): asks the type to deserialize from a deserializer
/// that only records the list serde hands to `deserialize_struct`.
fn struct_fields<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{Deserializer, Error, Visitor, value};

    struct Recorder(&'static [&'static str]);

    impl<'de> Deserializer<'de> for &mut Recorder {
        type Error = value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, value::Error> {
            Err(value::Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, value::Error> {
            self.0 = fields;
            Err(value::Error::custom("fields recorded"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }

    let mut recorder = Recorder(&[]);
    let _ = T::deserialize(&mut recorder);
    recorder.0
}

fn sanitize_field_name(name: &str) -> String {
    name.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        .take(MAX_REPORTED_NAME_LEN)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param_of(body: &str) -> Option<String> {
        match parse_generation_body(body.as_bytes()) {
            Err(ApiError::InvalidRequest { param, .. }) => param.map(|p| p.into_owned()),
            other => panic!("expected a 400 for {body}, got {other:?}"),
        }
    }

    #[test]
    fn known_fields_are_the_request_structs_fields() {
        assert_eq!(
            *KNOWN_FIELDS,
            [
                "prompt",
                "model",
                "n",
                "size",
                "response_format",
                "output_format",
                "output_compression",
                "quality",
                "style",
                "background",
                "moderation",
                "stream",
                "partial_images",
                "user",
                "seed",
                "safety_identifier",
                "complexity",
                "frame_count",
                "frame_duration_ms",
            ]
        );
    }

    #[test]
    fn nulls_and_unknown_fields_are_accepted() {
        let parsed = parse_generation_body(
            br#"{"prompt":"x","model":null,"n":null,"size":null,"quality":null,"style":null,
                 "response_format":null,"extra_body_thing":{"a":1},"user":null}"#,
        )
        .unwrap();
        assert_eq!(parsed.request.prompt.as_deref(), Some("x"));
        assert!(parsed.request.n.is_none());
        assert_eq!(parsed.unknown_fields, ["extra_body_thing"]);
    }

    #[test]
    fn wrong_types_name_the_field() {
        assert_eq!(param_of(r#"{"prompt":"x","n":"2"}"#).as_deref(), Some("n"));
        assert_eq!(param_of(r#"{"prompt":"x","n":2.5}"#).as_deref(), Some("n"));
        assert_eq!(param_of(r#"{"prompt":5}"#).as_deref(), Some("prompt"));
        assert_eq!(
            param_of(r#"{"prompt":"x","size":[1024,1024]}"#).as_deref(),
            Some("size")
        );
        assert_eq!(
            param_of(r#"{"prompt":"x","stream":"yes"}"#).as_deref(),
            Some("stream")
        );
        assert_eq!(
            param_of(r#"{"prompt":"x","n":123456789012345678901234567890}"#).as_deref(),
            Some("n")
        );
    }

    #[test]
    fn malformed_bodies_are_400_without_param() {
        for body in [
            "",
            "   ",
            "{",
            "[1,2]",
            "\"prompt\"",
            "{\"prompt\": \"x\",}",
            "{\"prompt\":1e999}",
        ] {
            assert_eq!(param_of(body), None, "{body:?}");
        }
        let deep = "[".repeat(10_000);
        assert_eq!(param_of(&deep), None);
        assert!(matches!(
            parse_generation_body(&[b'{', 0xff, 0xfe, b'}']),
            Err(ApiError::InvalidRequest { .. })
        ));
    }
}
