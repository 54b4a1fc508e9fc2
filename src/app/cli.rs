//! `image-gateway keys create|list|revoke`: the admin API's key operations
//! from the binary, straight against the database the configuration names
//! (so they work with the gateway stopped, and without an admin key). The
//! output is the admin API's JSON. Running replicas see the change within a
//! second (at once on PostgreSQL).

use clap::Subcommand;
use serde_json::{Map, Value, json};

use crate::admin;
use crate::config::Settings;
use crate::store::{Store, now};

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make a key and print it with its secret (shown this once only).
    Create {
        /// A name to recognise the key by.
        #[arg(long)]
        name: String,
        /// Model ids the key may use (comma-separated); default: every model.
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        /// Budget in USD, e.g. 5 or 0.50; default: none.
        #[arg(long)]
        budget_usd: Option<f64>,
        /// What the budget covers: total (default), day or month (UTC).
        #[arg(long)]
        budget_period: Option<String>,
        /// The key's own request limit per minute (0: unlimited); default:
        /// limits.requests_per_minute.
        #[arg(long)]
        requests_per_minute: Option<u32>,
        /// The key's own image limit per minute (0: unlimited); default:
        /// limits.images_per_minute.
        #[arg(long)]
        images_per_minute: Option<u32>,
        /// When the key stops working (RFC 3339, e.g. 2027-01-31T00:00:00Z).
        #[arg(long)]
        expires_at: Option<String>,
    },
    /// Print every key (no secrets), with its spend in its current period.
    List,
    /// Revoke a key, at once and for good.
    Revoke {
        /// The key's id (`key_...`).
        id: String,
    },
}

impl KeysCommand {
    /// The admin API body the command stands for (`create` only).
    fn body(&self) -> Value {
        let mut body = Map::new();
        if let KeysCommand::Create {
            name,
            models,
            budget_usd,
            budget_period,
            requests_per_minute,
            images_per_minute,
            expires_at,
        } = self
        {
            body.insert("name".into(), json!(name));
            if !models.is_empty() {
                body.insert("models".into(), json!(models));
            }
            for (field, value) in [
                ("budget_usd", budget_usd.map(|v| json!(v))),
                ("budget_period", budget_period.as_ref().map(|v| json!(v))),
                ("requests_per_minute", requests_per_minute.map(|v| json!(v))),
                ("images_per_minute", images_per_minute.map(|v| json!(v))),
                ("expires_at", expires_at.as_ref().map(|v| json!(v))),
            ] {
                if let Some(v) = value {
                    body.insert(field.into(), v);
                }
            }
        }
        Value::Object(body)
    }
}

/// Run one command; the JSON to print, or a message for stderr.
pub fn run(settings: &Settings, command: &KeysCommand) -> Result<String, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    runtime.block_on(async {
        let store = Store::open(&settings.database)
            .await
            .map_err(|e| e.to_string())?;
        let at = now();
        let out = match command {
            KeysCommand::Create { .. } => {
                let catalog = settings.models.catalog().map_err(|e| e.to_string())?;
                let new = admin::new_key(&command.body(), &catalog, at).map_err(|e| e.message())?;
                let (record, secret) = store.create_key(new).await.map_err(|e| e.to_string())?;
                let mut out = admin::key_json(&record, at);
                out["key"] = Value::String(secret);
                out
            }
            KeysCommand::List => {
                let keys = store.keys().await.map_err(|e| e.to_string())?;
                let data: Vec<Value> = keys.iter().map(|k| admin::key_json(k, at)).collect();
                json!({"object": "list", "data": data})
            }
            KeysCommand::Revoke { id } => {
                let key = store
                    .revoke_key(id)
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("no key with id `{id}`"))?;
                admin::key_json(&key, at)
            }
        };
        store.close().await;
        serde_json::to_string_pretty(&out).map_err(|e| e.to_string())
    })
}
