//! The admin API's language, shared by its HTTP handlers
//! (`crate::http::admin`) and the `image-gateway keys` commands: reading a
//! key's fields from JSON (checked against the model catalog), and writing
//! keys and spend reports as JSON. Money is exact micro-dollars inside and
//! decimal USD numbers in JSON; times are RFC 3339 in JSON and Unix seconds
//! inside.

use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::{Iso8601, Rfc3339};

use crate::domain::ModelCatalog;
use crate::error::ApiError;
use crate::store::keys::{BudgetPeriod, KeyPatch, KeyRecord, NewKey};
use crate::store::ledger::{GroupBy, SpendQuery, SpendRow};

/// The largest budget accepted, in USD.
const MAX_BUDGET_USD: f64 = 1_000_000.0;

/// Longest key name.
const MAX_NAME_CHARS: usize = 200;

/// Micro-dollars in a dollar.
const MICROS: f64 = 1_000_000.0;

/// Dollars as a JSON number (`0.04`).
pub fn usd(micros: u64) -> f64 {
    micros as f64 / MICROS
}

/// RFC 3339 for Unix seconds (UTC).
pub fn rfc3339(at: i64) -> Value {
    OffsetDateTime::from_unix_timestamp(at)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .map_or(Value::Null, Value::String)
}

/// A timestamp given as RFC 3339, or as a date (`YYYY-MM-DD`, its UTC
/// midnight).
pub fn parse_time(text: &str) -> Option<i64> {
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        return Some(t.unix_timestamp());
    }
    time::Date::parse(text, &Iso8601::DATE)
        .ok()
        .map(|d| d.midnight().assume_utc().unix_timestamp())
}

/// A key as the admin API shows it (never its secret).
pub fn key_json(k: &KeyRecord, at: i64) -> Value {
    let status = if k.revoked_at.is_some() {
        "revoked"
    } else if k.is_expired(at) {
        "expired"
    } else {
        "active"
    };
    let period_start = match k.budget_period {
        BudgetPeriod::Total => Value::Null,
        period => rfc3339(period.start(at)),
    };
    json!({
        "object": "api_key",
        "id": k.id,
        "name": k.name,
        "key_prefix": k.key_prefix,
        "status": status,
        "models": k.models,
        "budget_usd": k.budget_micro_usd.map(usd),
        "budget_period": k.budget_period.as_str(),
        "period_start": period_start,
        "spend_usd": usd(k.spent_in_period(at)),
        "reserved_usd": usd(k.reserved_micro_usd),
        "requests_per_minute": k.requests_per_minute,
        "images_per_minute": k.images_per_minute,
        "expires_at": k.expires_at.map_or(Value::Null, rfc3339),
        "created_at": rfc3339(k.created_at),
        "revoked_at": k.revoked_at.map_or(Value::Null, rfc3339),
    })
}

/// The fields a key is made or edited with, as read from JSON.
#[derive(Debug, Default)]
struct Fields {
    name: Option<String>,
    models: Option<Option<Vec<String>>>,
    budget: Option<Option<u64>>,
    period: Option<BudgetPeriod>,
    rpm: Option<Option<u32>>,
    ipm: Option<Option<u32>>,
    expires_at: Option<Option<i64>>,
}

const FIELDS: &[&str] = &[
    "name",
    "models",
    "budget_usd",
    "budget_period",
    "requests_per_minute",
    "images_per_minute",
    "expires_at",
];

fn object(body: &Value) -> Result<&Map<String, Value>, ApiError> {
    let obj = body
        .as_object()
        .ok_or_else(|| ApiError::invalid_body("The request body must be a JSON object."))?;
    if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(ApiError::invalid_body(format!(
            "Unknown field `{}`; a key has {}.",
            unknown.chars().take(64).collect::<String>(),
            FIELDS.join(", ")
        )));
    }
    Ok(obj)
}

fn read_fields(
    obj: &Map<String, Value>,
    catalog: &ModelCatalog,
    at: i64,
) -> Result<Fields, ApiError> {
    let mut f = Fields::default();
    if let Some(v) = obj.get("name") {
        let name = v
            .as_str()
            .map(str::trim)
            .filter(|n| !n.is_empty() && n.chars().count() <= MAX_NAME_CHARS)
            .ok_or_else(|| {
                ApiError::invalid(
                    format!(
                        "'name' must be a non-empty string of at most {MAX_NAME_CHARS} characters."
                    ),
                    "name",
                )
            })?;
        f.name = Some(name.to_owned());
    }
    if let Some(v) = obj.get("models") {
        f.models = Some(match v {
            Value::Null => None,
            Value::Array(items) => {
                let mut ids = Vec::with_capacity(items.len());
                for item in items {
                    let name = item.as_str().ok_or_else(|| {
                        ApiError::invalid("'models' must be a list of model ids.", "models")
                    })?;
                    let model = catalog.resolve(name).ok_or_else(|| {
                        ApiError::invalid(
                            format!(
                                "'models' names `{}`, which this gateway does not serve (GET /v1/models lists them).",
                                name.chars().take(64).collect::<String>()
                            ),
                            "models",
                        )
                    })?;
                    if !ids.contains(&model.id) {
                        ids.push(model.id.clone());
                    }
                }
                Some(ids)
            }
            _ => {
                return Err(ApiError::invalid(
                    "'models' must be a list of model ids, or null for every model.",
                    "models",
                ));
            }
        });
    }
    if let Some(v) = obj.get("budget_usd") {
        f.budget = Some(match v {
            Value::Null => None,
            v => {
                let usd = v
                    .as_f64()
                    .filter(|u| u.is_finite() && (0.0..=MAX_BUDGET_USD).contains(u))
                    .ok_or_else(|| {
                        ApiError::invalid(
                            format!("'budget_usd' must be a number of dollars from 0 to {MAX_BUDGET_USD}, or null for no budget."),
                            "budget_usd",
                        )
                    })?;
                Some((usd * MICROS).round() as u64)
            }
        });
    }
    if let Some(v) = obj.get("budget_period") {
        f.period = Some(match v {
            Value::Null => BudgetPeriod::Total,
            v => v.as_str().and_then(BudgetPeriod::parse).ok_or_else(|| {
                ApiError::invalid(
                    format!(
                        "'budget_period' must be one of {}.",
                        BudgetPeriod::WORDS.join(", ")
                    ),
                    "budget_period",
                )
            })?,
        });
    }
    for (field, slot) in [
        ("requests_per_minute", &mut f.rpm),
        ("images_per_minute", &mut f.ipm),
    ] {
        if let Some(v) = obj.get(field) {
            *slot = Some(match v {
                Value::Null => None,
                v => Some(
                    v.as_u64()
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or_else(|| {
                            ApiError::invalid(
                                format!("'{field}' must be a whole number (0: unlimited), or null for the gateway's own limit."),
                                if field == "requests_per_minute" {
                                    "requests_per_minute"
                                } else {
                                    "images_per_minute"
                                },
                            )
                        })?,
                ),
            });
        }
    }
    if let Some(v) = obj.get("expires_at") {
        f.expires_at = Some(match v {
            Value::Null => None,
            v => {
                let at_time = v.as_str().and_then(parse_time).ok_or_else(|| {
                    ApiError::invalid(
                        "'expires_at' must be an RFC 3339 time such as 2027-01-31T00:00:00Z, or null.",
                        "expires_at",
                    )
                })?;
                if at_time <= at {
                    return Err(ApiError::invalid(
                        "'expires_at' is in the past.",
                        "expires_at",
                    ));
                }
                Some(at_time)
            }
        });
    }
    Ok(f)
}

/// A new key from a `POST /admin/v1/keys` body.
pub fn new_key(body: &Value, catalog: &ModelCatalog, at: i64) -> Result<NewKey, ApiError> {
    let f = read_fields(object(body)?, catalog, at)?;
    let name = f
        .name
        .ok_or_else(|| ApiError::invalid("'name' is required.", "name"))?;
    Ok(NewKey {
        name,
        models: f.models.flatten(),
        budget_micro_usd: f.budget.flatten(),
        budget_period: f.period.unwrap_or_default(),
        requests_per_minute: f.rpm.flatten(),
        images_per_minute: f.ipm.flatten(),
        expires_at: f.expires_at.flatten(),
    })
}

/// An edit from a `PATCH /admin/v1/keys/{id}` body: fields left out stay,
/// `null` clears.
pub fn key_patch(body: &Value, catalog: &ModelCatalog, at: i64) -> Result<KeyPatch, ApiError> {
    let f = read_fields(object(body)?, catalog, at)?;
    Ok(KeyPatch {
        name: f.name,
        models: f.models,
        budget_micro_usd: f.budget,
        budget_period: f.period,
        requests_per_minute: f.rpm,
        images_per_minute: f.ipm,
        expires_at: f.expires_at,
    })
}

/// A spend query from `GET /admin/v1/spend`'s parameters: `group_by`
/// (`key`, the default, `model` or `day`), `from` and `to` (RFC 3339 or
/// dates; `to` excluded; default: everything up to now), `key` (one key's
/// spend only).
pub fn spend_query<'a>(
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
    at: i64,
) -> Result<SpendQuery, ApiError> {
    let mut q = SpendQuery {
        group_by: GroupBy::Key,
        from: 0,
        to: at.saturating_add(1),
        key_id: None,
    };
    for (name, value) in params {
        match name {
            "group_by" => {
                q.group_by = GroupBy::parse(value).ok_or_else(|| {
                    ApiError::invalid(
                        format!("'group_by' must be one of {}.", GroupBy::WORDS.join(", ")),
                        "group_by",
                    )
                })?;
            }
            "from" | "to" => {
                let t = parse_time(value).ok_or_else(|| {
                    ApiError::invalid(
                        format!("'{name}' must be an RFC 3339 time or a date (YYYY-MM-DD)."),
                        if name == "from" { "from" } else { "to" },
                    )
                })?;
                if name == "from" {
                    q.from = t;
                } else {
                    q.to = t;
                }
            }
            "key" => q.key_id = Some(value.to_owned()).filter(|k| !k.is_empty()),
            other => {
                return Err(ApiError::invalid_body(format!(
                    "Unknown parameter `{}`; spend takes group_by, from, to and key.",
                    other.chars().take(64).collect::<String>()
                )));
            }
        }
    }
    if q.from >= q.to {
        return Err(ApiError::invalid("'from' must be before 'to'.", "from"));
    }
    Ok(q)
}

/// A spend report.
pub fn spend_json(q: &SpendQuery, rows: &[SpendRow]) -> Value {
    let group = q.group_by.as_str();
    let total: u64 = rows.iter().map(|r| r.cost_micro_usd).sum();
    let data: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                group: r.group,
                "spend_usd": usd(r.cost_micro_usd),
                "requests": r.requests,
                "images": r.images,
            })
        })
        .collect();
    json!({
        "object": "list",
        "group_by": group,
        "from": rfc3339(q.from),
        "to": rfc3339(q.to),
        "key": q.key_id,
        "total_usd": usd(total),
        "data": data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn catalog() -> ModelCatalog {
        Settings::default().models.catalog().unwrap()
    }

    const NOW: i64 = 1_797_342_310; // 2026-12-15T13:45:10Z

    #[test]
    fn a_new_key_takes_every_documented_field_and_resolves_aliases() {
        let body = json!({
            "name": " ci ",
            "models": ["imagen-4", "dall-e-3", "imagen-4-fast"],
            "budget_usd": 5.0,
            "budget_period": "day",
            "requests_per_minute": 60,
            "images_per_minute": 0,
            "expires_at": "2027-01-31T00:00:00Z",
        });
        let k = new_key(&body, &catalog(), NOW).unwrap();
        assert_eq!(k.name, "ci");
        // dall-e-3 is an alias of imagen-4-fast: listed once.
        assert_eq!(
            k.models.unwrap(),
            ["imagen-4".to_owned(), "imagen-4-fast".to_owned()]
        );
        assert_eq!(k.budget_micro_usd, Some(5_000_000));
        assert_eq!(k.budget_period, BudgetPeriod::Day);
        assert_eq!(
            (k.requests_per_minute, k.images_per_minute),
            (Some(60), Some(0))
        );
        assert_eq!(k.expires_at, Some(1_801_353_600));
        let minimal = new_key(&json!({"name": "x"}), &catalog(), NOW).unwrap();
        assert_eq!(
            (minimal.models, minimal.budget_micro_usd),
            (None, None),
            "every model, no budget"
        );
    }

    #[test]
    fn bad_fields_are_400s_naming_the_field() {
        for (body, param) in [
            (json!({}), Some("name")),
            (json!({"name": ""}), Some("name")),
            (
                json!({"name": "x", "models": ["midjourney"]}),
                Some("models"),
            ),
            (json!({"name": "x", "models": "imagen-4"}), Some("models")),
            (json!({"name": "x", "budget_usd": -1}), Some("budget_usd")),
            (json!({"name": "x", "budget_usd": "5"}), Some("budget_usd")),
            (
                json!({"name": "x", "budget_period": "week"}),
                Some("budget_period"),
            ),
            (
                json!({"name": "x", "requests_per_minute": -1}),
                Some("requests_per_minute"),
            ),
            (
                json!({"name": "x", "images_per_minute": 1.5}),
                Some("images_per_minute"),
            ),
            (
                json!({"name": "x", "expires_at": "tomorrow"}),
                Some("expires_at"),
            ),
            (
                json!({"name": "x", "expires_at": "2020-01-01T00:00:00Z"}),
                Some("expires_at"),
            ),
            (json!({"name": "x", "key": "sk-mine"}), None),
            (json!(["name"]), None),
        ] {
            let err = new_key(&body, &catalog(), NOW).unwrap_err();
            assert_eq!(err.param(), param, "{body}");
            assert_eq!(actix_web::ResponseError::status_code(&err), 400);
        }
    }

    #[test]
    fn a_patch_tells_absent_from_null() {
        let p = key_patch(
            &json!({"budget_usd": null, "models": ["imagen-4"]}),
            &catalog(),
            NOW,
        )
        .unwrap();
        assert_eq!(p.budget_micro_usd, Some(None));
        assert_eq!(p.models, Some(Some(vec!["imagen-4".into()])));
        assert_eq!(p.name, None);
        assert_eq!(p.expires_at, None);
        assert!(key_patch(&json!({}), &catalog(), NOW).unwrap().is_empty());
    }

    #[test]
    fn spend_queries_default_to_everything_by_key() {
        let q = spend_query([], NOW).unwrap();
        assert_eq!((q.group_by, q.from, q.to), (GroupBy::Key, 0, NOW + 1));
        let q = spend_query(
            [
                ("group_by", "day"),
                ("from", "2026-12-01"),
                ("to", "2026-12-15T00:00:00Z"),
                ("key", "key_1"),
            ],
            NOW,
        )
        .unwrap();
        assert_eq!(q.group_by, GroupBy::Day);
        assert_eq!((q.from, q.to), (1_796_083_200, 1_797_292_800));
        assert_eq!(q.key_id.as_deref(), Some("key_1"));
        for bad in [
            [("group_by", "hour")],
            [("from", "yesterday")],
            [("from", "2030-01-01")],
            [("limit", "5")],
        ] {
            assert!(spend_query(bad, NOW).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn money_and_times_render_exactly() {
        assert_eq!(json!(usd(40_000)).to_string(), "0.04");
        assert_eq!(json!(usd(5_000_000)).to_string(), "5.0");
        assert_eq!(rfc3339(1_801_353_600), json!("2027-01-31T00:00:00Z"));
        assert_eq!(parse_time("2027-01-31"), Some(1_801_353_600));
        assert_eq!(parse_time("2027-01-31T01:00:00+01:00"), Some(1_801_353_600));
    }
}
