//! The route table, and nothing else: each route's method, path, access
//! policy and handler. The table is data: the auth middleware reads each
//! path's policy from it, and the tests walk it (auth, OpenAPI coverage).

use actix_web::web;

use super::{admin, files, generations, health, metrics, models, unsupported};

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone who can reach the listener: probes, and image file links
    /// (their 128-bit random names are the capability, like OpenAI's
    /// signed image URLs).
    Open,
    /// A client key, when keys are configured (`auth.api_keys`).
    Key,
    /// Open when `metrics.public` is set, else a client key.
    Metrics,
    /// The admin key (`auth.admin_key`) only, never a client key; without
    /// an admin key the path answers 404 like an unknown one.
    Admin,
}

/// One route: method, path, access policy and the handler registration.
pub struct RouteSpec {
    pub method: &'static str,
    pub path: &'static str,
    pub access: Access,
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
        access: Access::Key,
        route: || web::post().to(generations::create),
    },
    RouteSpec {
        method: "POST",
        path: "/images/edits",
        access: Access::Key,
        route: || web::post().to(unsupported::edits),
    },
    RouteSpec {
        method: "POST",
        path: "/images/variations",
        access: Access::Key,
        route: || web::post().to(unsupported::variations),
    },
    RouteSpec {
        method: "GET",
        path: "/images/files/{name}",
        access: Access::Open,
        route: || web::get().to(files::get),
    },
    RouteSpec {
        method: "GET",
        path: "/models",
        access: Access::Key,
        route: || web::get().to(models::list),
    },
    RouteSpec {
        method: "GET",
        path: "/models/{model}",
        access: Access::Key,
        route: || web::get().to(models::retrieve),
    },
];

/// Probes, at the root only.
pub const PROBE_ROUTES: &[RouteSpec] = &[
    RouteSpec {
        method: "GET",
        path: "/healthz",
        access: Access::Open,
        route: || web::get().to(health::live),
    },
    RouteSpec {
        method: "GET",
        path: "/readyz",
        access: Access::Open,
        route: || web::get().to(health::ready),
    },
];

/// The admin API (keys, budgets, spend), at the root only.
pub const ADMIN_ROUTES: &[RouteSpec] = &[
    RouteSpec {
        method: "POST",
        path: "/admin/v1/keys",
        access: Access::Admin,
        route: || web::post().to(admin::create_key),
    },
    RouteSpec {
        method: "GET",
        path: "/admin/v1/keys",
        access: Access::Admin,
        route: || web::get().to(admin::list_keys),
    },
    RouteSpec {
        method: "GET",
        path: "/admin/v1/keys/{id}",
        access: Access::Admin,
        route: || web::get().to(admin::get_key),
    },
    RouteSpec {
        method: "PATCH",
        path: "/admin/v1/keys/{id}",
        access: Access::Admin,
        route: || web::patch().to(admin::update_key),
    },
    RouteSpec {
        method: "DELETE",
        path: "/admin/v1/keys/{id}",
        access: Access::Admin,
        route: || web::delete().to(admin::revoke_key),
    },
    RouteSpec {
        method: "GET",
        path: "/admin/v1/spend",
        access: Access::Admin,
        route: || web::get().to(admin::spend),
    },
];

/// Every path under it is the admin API's: an unknown one is refused
/// without the admin key before its 404.
pub const ADMIN_PREFIX: &str = "/admin/";

pub const METRICS_ROUTE: RouteSpec = RouteSpec {
    method: "GET",
    path: "/metrics",
    access: Access::Metrics,
    route: || web::get().to(metrics::render),
};

/// One served route with its full path.
#[derive(Clone, Debug)]
pub struct Served {
    pub method: &'static str,
    pub path: String,
    pub access: Access,
}

/// Every route the API listener serves, with full paths.
pub fn served(serve_metrics: bool) -> Vec<Served> {
    let mut all: Vec<Served> = API_PREFIXES
        .iter()
        .flat_map(|p| {
            API_ROUTES.iter().map(move |r| Served {
                method: r.method,
                path: format!("{p}{}", r.path),
                access: r.access,
            })
        })
        .collect();
    let root = PROBE_ROUTES
        .iter()
        .chain(ADMIN_ROUTES)
        .chain(serve_metrics.then_some(&METRICS_ROUTE));
    all.extend(root.map(|r| Served {
        method: r.method,
        path: r.path.to_owned(),
        access: r.access,
    }));
    all
}

/// Whether a concrete path matches a route pattern (`{x}` matches one
/// non-empty segment).
fn matches(pattern: &str, path: &str) -> bool {
    let mut want = pattern.split('/');
    let mut got = path.split('/');
    loop {
        match (want.next(), got.next()) {
            (None, None) => return true,
            (Some(w), Some(g)) if w.starts_with('{') && w.ends_with('}') => {
                if g.is_empty() {
                    return false;
                }
            }
            (Some(w), Some(g)) if w == g => {}
            _ => return false,
        }
    }
}

/// The access policy of a request path: the matching route's, `Admin` for
/// any other path under `/admin/`, and `Key` for any other path no route
/// serves (deny by default, before the 404).
pub fn access_of(path: &str) -> Access {
    if path.starts_with(ADMIN_PREFIX) || path == "/admin" {
        return Access::Admin;
    }
    let api = API_PREFIXES.iter().flat_map(|prefix| {
        API_ROUTES.iter().filter_map(move |r| {
            let rest = path.strip_prefix(prefix)?;
            matches(r.path, rest).then_some(r.access)
        })
    });
    let root = PROBE_ROUTES
        .iter()
        .chain([&METRICS_ROUTE])
        .filter(|r| matches(r.path, path))
        .map(|r| r.access);
    api.chain(root).next().unwrap_or(Access::Key)
}

/// The API routes. `/metrics` is added only when it is served on this
/// listener (not on a separate admin address).
pub fn configure(cfg: &mut web::ServiceConfig, serve_metrics: bool) {
    for p in API_PREFIXES {
        for r in API_ROUTES {
            cfg.route(&format!("{p}{}", r.path), (r.route)());
        }
    }
    for r in PROBE_ROUTES.iter().chain(ADMIN_ROUTES) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_take_the_policy_of_the_route_that_serves_them() {
        for (path, access) in [
            ("/healthz", Access::Open),
            ("/readyz", Access::Open),
            ("/metrics", Access::Metrics),
            ("/v1/images/files/abc.png", Access::Open),
            ("/images/files/abc.png", Access::Open),
            ("/v1/images/files/", Access::Key),
            ("/v1/images/files/a/b", Access::Key),
            ("/v1/images/generations", Access::Key),
            ("/images/generations", Access::Key),
            ("/v1/models/imagen-4", Access::Key),
            ("/v1/unknown", Access::Key),
            ("/healthz/x", Access::Key),
            ("/", Access::Key),
            ("/admin/v1/keys", Access::Admin),
            ("/admin/v1/keys/key_0123", Access::Admin),
            ("/admin/v1/spend", Access::Admin),
            ("/admin/v1/unknown", Access::Admin),
            ("/admin", Access::Admin),
            ("/v1/admin/v1/keys", Access::Key),
        ] {
            assert_eq!(access_of(path), access, "{path}");
        }
    }
}
