//! A finished generation: what a response (JSON or event stream) is rendered
//! from, what the cache keeps, and what the shared cache carries between
//! replicas.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::formats::{OutputFormat, ResponseFormat};

/// Which image backend produced (or would produce) images.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// fal.ai over HTTP.
    Fal,
    /// The offline renderer built into the gateway.
    Local,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Fal => "fal",
            BackendKind::Local => "local",
        }
    }
}

/// One delivered image, in the form the client receives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Image {
    /// Standard padded base64 of the encoded image (`b64_json`).
    Base64(Bytes),
    /// An absolute link to an image held elsewhere (the upstream's CDN).
    Url(Arc<str>),
    /// An image in this gateway's file store, by file name. Its link is made
    /// absolute per response, so a cached answer never carries another
    /// client's host.
    File(Arc<str>),
}

impl Image {
    /// Bytes this image keeps in memory.
    pub fn held_bytes(&self) -> usize {
        match self {
            Image::Base64(b) => b.len(),
            Image::Url(u) | Image::File(u) => u.len(),
        }
    }
}

#[derive(Debug)]
pub struct Generation {
    /// Unix seconds, OpenAI's `created`.
    pub created: i64,
    /// When it was produced, for the `age` header and the cache's TTL.
    pub produced_at: Instant,
    /// The delivered `WxH`.
    pub size: String,
    pub output_format: OutputFormat,
    pub response_format: ResponseFormat,
    pub images: Vec<Image>,
    pub backend: BackendKind,
    /// The upstream endpoint that produced the images (also for the local
    /// backend, which plays that endpoint): `x-image-gateway-endpoint`.
    pub endpoint: Arc<str>,
    /// The seed the endpoint reports having used, where it does.
    pub seed: Option<u64>,
    /// What making it cost upstream (0 offline): what a cache hit or a
    /// coalesced request saves.
    pub cost: super::money::MicroUsd,
}
