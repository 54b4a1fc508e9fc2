//! The route table, and nothing else: paths and their handlers. The table
//! is data so that tests can walk it (auth, OpenAPI coverage).

use actix_web::web;

pub mod files;
pub mod generations;
pub mod health;
pub mod metrics;
pub mod models;
pub mod unsupported;

/// One route: method, path and the handler registration.
pub struct RouteSpec {
    pub method: &'static str,
    pub path: &'static str,
    pub route: fn() -> actix_web::Route,
}

/// Every API path is served with and without the `/v1` prefix, because a
/// client whose base URL lacks `/v1` sends `POST /images/generations`.
pub const API_PREFIXES: [&str; 2] = ["/v1", ""];

/// Routes under the API prefixes.
pub const API_ROUTES: &[RouteSpec] = &[
    RouteSpec {
        method: "POST",
        path: "/images/generations",
        route: || web::post().to(generations::create),
    },
    RouteSpec {
        method: "POST",
        path: "/images/edits",
        route: || web::post().to(unsupported::edits),
    },
    RouteSpec {
        method: "POST",
        path: "/images/variations",
        route: || web::post().to(unsupported::variations),
    },
    RouteSpec {
        method: "GET",
        path: "/images/files/{name}",
        route: || web::get().to(files::get),
    },
    RouteSpec {
        method: "GET",
        path: "/models",
        route: || web::get().to(models::list),
    },
    RouteSpec {
        method: "GET",
        path: "/models/{model}",
        route: || web::get().to(models::retrieve),
    },
];

/// Probes, at the root only.
pub const PROBE_ROUTES: &[RouteSpec] = &[
    RouteSpec {
        method: "GET",
        path: "/healthz",
        route: || web::get().to(health::live),
    },
    RouteSpec {
        method: "GET",
        path: "/readyz",
        route: || web::get().to(health::ready),
    },
];

pub const METRICS_ROUTE: RouteSpec = RouteSpec {
    method: "GET",
    path: "/metrics",
    route: || web::get().to(metrics::render),
};

/// Every (method, full path) the API listener serves.
pub fn served(serve_metrics: bool) -> Vec<(&'static str, String)> {
    let mut all: Vec<(&'static str, String)> = API_PREFIXES
        .iter()
        .flat_map(|p| {
            API_ROUTES
                .iter()
                .map(move |r| (r.method, format!("{p}{}", r.path)))
        })
        .collect();
    all.extend(PROBE_ROUTES.iter().map(|r| (r.method, r.path.to_owned())));
    if serve_metrics {
        all.push((METRICS_ROUTE.method, METRICS_ROUTE.path.to_owned()));
    }
    all
}

/// The API routes. `/metrics` is added only when it is served on this
/// listener (not on a separate admin address).
pub fn configure(cfg: &mut web::ServiceConfig, serve_metrics: bool) {
    for p in API_PREFIXES {
        for r in API_ROUTES {
            cfg.route(&format!("{p}{}", r.path), (r.route)());
        }
    }
    for r in PROBE_ROUTES {
        cfg.route(r.path, (r.route)());
    }
    if serve_metrics {
        cfg.route(METRICS_ROUTE.path, (METRICS_ROUTE.route)());
    }
}

/// The admin listener: metrics and probes only.
pub fn configure_admin(cfg: &mut web::ServiceConfig) {
    cfg.route(METRICS_ROUTE.path, (METRICS_ROUTE.route)());
    for r in PROBE_ROUTES {
        cfg.route(r.path, (r.route)());
    }
}
