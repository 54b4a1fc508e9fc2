//! The gateway's own vocabulary, free of HTTP, OpenAI's wire format and any
//! upstream's: image formats and ratios, the model catalog, the plan of a
//! generation and its jobs, the finished generation, and the upstream
//! endpoints' profiles (how each takes a request, what it costs, how long
//! it lives) with the built-in ones. Imports nothing of ours.

pub mod builtin;
pub mod catalog;
pub mod date;
pub mod formats;
pub mod generation;
pub mod money;
pub mod plan;
pub mod profile;

pub use catalog::{EndpointId, Model, ModelCatalog};
pub use date::Date;
pub use formats::{Moderation, OutputFormat, Quality, ResponseFormat, SizeRequest};
pub use generation::{BackendKind, Generation, Image};
pub use money::MicroUsd;
pub use plan::{EndpointPlan, GenerationPlan, Job};
pub use profile::{EndpointProfile, Lifecycle, Price, PriceUnit};
