-- The admin console: sign-in sessions (the cookie's secret is stored only as a SHA-256 hash; a
-- session dies with its admin key) and an index for the overview's activity-over-time queries.
-- The same version exists in migrations/sqlite/.

CREATE TABLE console_sessions (
    id_hash      TEXT PRIMARY KEY,
    org_id       TEXT NOT NULL REFERENCES orgs(id),
    admin_key_id TEXT NOT NULL REFERENCES admin_keys(id),
    created_at   BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL
);
CREATE INDEX console_sessions_expiry ON console_sessions(expires_at);

CREATE INDEX activations_org_time ON activations(org_id, created_at);
CREATE INDEX activations_org_token ON activations(org_id, token_id, id);
CREATE INDEX activations_org_user ON activations(org_id, user_id, id);
CREATE INDEX activations_org_device ON activations(org_id, device_id, id);
CREATE INDEX devices_org_token ON devices(org_id, token_id, status);
