-- Keys, budgets and the spend ledger (SQLite). Money is integer
-- micro-dollars, times are Unix seconds (UTC). Keep in step with
-- ../postgres/0001_keys_and_spend.sql: the same tables, columns and meaning.

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    -- SHA-256 of the secret, hex; the secret itself is never stored.
    secret_sha256 TEXT NOT NULL UNIQUE,
    -- The secret's first characters, to recognise a key in a list.
    key_prefix TEXT NOT NULL,
    -- JSON array of model ids; NULL: every model.
    models TEXT,
    -- NULL: no budget.
    budget_micro_usd BIGINT,
    budget_period TEXT NOT NULL DEFAULT 'total',
    requests_per_minute BIGINT,
    images_per_minute BIGINT,
    expires_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    revoked_at BIGINT,
    -- Start of the budget period `spent_micro_usd` counts (0 for `total`).
    period_start BIGINT NOT NULL DEFAULT 0,
    -- Settled spend in that period: the sum of its ledger rows.
    spent_micro_usd BIGINT NOT NULL DEFAULT 0,
    -- Sum of this key's live reservations.
    reserved_micro_usd BIGINT NOT NULL DEFAULT 0
);

-- The most a request in flight may still cost, held against its key's
-- budget until it settles, is released, or expires (a crashed replica).
CREATE TABLE budget_reservations (
    id TEXT PRIMARY KEY,
    key_id TEXT NOT NULL REFERENCES api_keys (id),
    amount_micro_usd BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX budget_reservations_expiry ON budget_reservations (expires_at);

-- One row per generation that reached the image backend and succeeded.
CREATE TABLE spend_ledger (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at BIGINT NOT NULL,
    -- UTC date of created_at, YYYY-MM-DD.
    day TEXT NOT NULL,
    -- A database key's id, `cfg-<hex>` for a key from auth.api_keys, NULL
    -- for a caller without a key (an open gateway).
    key_id TEXT,
    model TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    images BIGINT NOT NULL,
    cost_micro_usd BIGINT NOT NULL,
    -- What fal reported in X-Fal-Billable-Units, summed over the jobs.
    billable_units TEXT,
    request_id TEXT
);
CREATE INDEX spend_ledger_time ON spend_ledger (created_at);
CREATE INDEX spend_ledger_key_time ON spend_ledger (key_id, created_at);

-- Bumped by every key change, so replicas drop their cached keys.
CREATE TABLE key_changes (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO key_changes (id, version) VALUES (1, 0);
