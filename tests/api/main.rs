#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The one integration test binary (one link on a 2-core machine). Each
//! module spawns the real application on port 0 against a fake fal server.

mod helpers;

mod budgets;
mod cache;
mod connections;
mod dashboards;
mod generations;
mod hostile;
mod keys;
mod limits;
mod memory;
mod metrics;
mod models;
mod openapi;
mod postgres;
mod process;
mod properties;
mod redis;
mod resilience;
mod routes;
mod ssrf;
mod upstream_checks;
