//! The one integration test binary (one link on a 2-core machine). Each
//! module spawns the real application on port 0 against a fake fal server.

mod helpers;

mod generations;
mod openapi;
mod process;
mod routes;
