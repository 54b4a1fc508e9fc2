//! The gateway's own vocabulary, free of HTTP, OpenAI's wire format and any
//! upstream's: image formats and ratios, the model catalog, the plan of a
//! generation and its jobs, and the finished generation. Imports nothing of
//! ours.

pub mod catalog;
pub mod formats;
pub mod generation;
pub mod plan;

pub use catalog::{EndpointId, Model, ModelCatalog};
pub use formats::{AspectRatio, OutputFormat, ResponseFormat};
pub use generation::{BackendKind, Generation, Image};
pub use plan::{GenerationPlan, Job};
