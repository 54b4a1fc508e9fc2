//! The HTTP edge: the route table with each route's access policy, the
//! middleware every request passes, and one handler per file.

pub mod admin;
pub mod body;
pub mod connection;
pub mod disconnect;
pub mod files;
pub mod generations;
pub mod health;
pub mod metrics;
pub mod middleware;
pub mod models;
pub mod routes;
mod state;
pub mod stream;
pub mod unsupported;

pub use state::AppState;
