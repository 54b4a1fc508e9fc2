//! The whole OpenAI Images contract as this gateway speaks it: the request
//! body and its validation into a plan, the JSON answer, and the event
//! stream. (Errors render in `crate::error`.)

pub mod events;
pub mod request;
pub mod response;
pub mod validate;

pub use request::{KNOWN_FIELDS, ParsedRequest, parse_generation_body};
pub use validate::{OPENAI_SIZES, PlanLimits, plan};
