//! OpenAI's image event stream (`stream: true`): SSE comment keep-alives,
//! one `image_generation.completed` event per image, or an `error` event,
//! which the SDKs raise. Imagen produces no partial images.

use bytes::Bytes;

use crate::domain::{Generation, GenerationPlan, Image};
use crate::error::ApiError;

/// An SSE comment: keeps proxies from closing a stream that waits.
pub const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

/// One `image_generation.completed` event per image, the payload shared.
/// Streamed images are always base64 (plans that stream ask for it).
pub fn completed(g: &Generation, plan: &GenerationPlan, out: &mut impl Extend<Bytes>) {
    for image in &g.images {
        let Image::Base64(b64) = image else {
            continue;
        };
        out.extend([Bytes::from_static(
            b"event: image_generation.completed\ndata: {\"type\":\"image_generation.completed\",\"b64_json\":\"",
        )]);
        out.extend(super::response::slices(b64));
        out.extend([Bytes::from(format!(
            "\",\"created_at\":{},\"size\":\"{}\",\"quality\":\"{}\",\"background\":\"{}\",\"output_format\":\"{}\",\"endpoint\":{},\"usage\":{{\"total_tokens\":0,\"input_tokens\":0,\"output_tokens\":0,\"input_tokens_details\":{{\"text_tokens\":0,\"image_tokens\":0}}}}}}\n\n",
            g.created,
            g.size,
            plan.quality.as_str(),
            plan.background,
            g.output_format.as_str(),
            serde_json::Value::from(&*g.endpoint),
        ))]);
    }
}

/// The `error` event: OpenAI's error object with `"type":"error"` in front.
pub fn error(e: &ApiError) -> Bytes {
    Bytes::from(format!(
        "event: error\ndata: {{\"type\":\"error\",{}\n\n",
        &e.body_json()[1..]
    ))
}
