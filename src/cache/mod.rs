//! Identical requests answered once: the key, the request's directives, the
//! status a request was served with, this replica's memory (L1), and the
//! optional Redis level (L2) shared by every replica with its fleet-wide
//! generation lock. Single-flight lives with the service that runs flights
//! (`service/flights.rs`).

pub mod codec;
pub mod directives;
pub mod key;
pub mod memory;
pub mod redis;
pub mod status;

pub use directives::CacheDirectives;
pub use key::CacheKey;
pub use memory::MemoryCache;
pub use redis::RedisCache;
pub use status::CacheStatus;
