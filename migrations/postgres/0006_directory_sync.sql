-- Directory sync: per-organization settings, per-profile retention, run history with per-user
-- detail, the lease that keeps one run per organization across processes, the Graph delta
-- state, user lifecycle timestamps and the audit of lifecycle changes. The same version exists
-- in migrations/sqlite/.

CREATE TABLE sync_settings (
    org_id                        TEXT PRIMARY KEY REFERENCES orgs(id),
    auto_sync_interval_hours      BIGINT NOT NULL DEFAULT 24,
    auto_update_user_details      BOOLEAN NOT NULL DEFAULT TRUE,
    auto_preserve_unmapped_users  BOOLEAN NOT NULL DEFAULT FALSE,
    mass_change_threshold_percent BIGINT NOT NULL DEFAULT 5,
    mass_change_threshold_min     BIGINT NOT NULL DEFAULT 10,
    updated_at                    BIGINT NOT NULL
);

-- The data-preservation policy of a profile (profiles are named by mappings and users; a name
-- without a row has the defaults).
CREATE TABLE profiles (
    org_id                TEXT NOT NULL REFERENCES orgs(id),
    name                  TEXT NOT NULL,
    auto_delete_preserved BOOLEAN NOT NULL DEFAULT FALSE,
    delete_after_days     BIGINT NOT NULL DEFAULT 30,
    updated_at            BIGINT NOT NULL,
    PRIMARY KEY (org_id, name)
);

CREATE TABLE sync_runs (
    id            TEXT PRIMARY KEY,
    org_id        TEXT NOT NULL REFERENCES orgs(id),
    -- 'schedule' | 'manual' | 'cli'
    run_trigger   TEXT NOT NULL,
    dry_run       BOOLEAN NOT NULL,
    as_of         BIGINT,
    -- running | completed | failed | needs_approval | approved | rejected
    status        TEXT NOT NULL,
    started_at    BIGINT NOT NULL,
    ended_at      BIGINT,
    replica_id    TEXT NOT NULL,
    seen          BIGINT NOT NULL DEFAULT 0,
    imported      BIGINT NOT NULL DEFAULT 0,
    updated       BIGINT NOT NULL DEFAULT 0,
    preserved     BIGINT NOT NULL DEFAULT 0,
    reenabled     BIGINT NOT NULL DEFAULT 0,
    deleted       BIGINT NOT NULL DEFAULT 0,
    skipped       BIGINT NOT NULL DEFAULT 0,
    errors        BIGINT NOT NULL DEFAULT 0,
    held_preserve BIGINT NOT NULL DEFAULT 0,
    held_delete   BIGINT NOT NULL DEFAULT 0,
    -- JSON array: [{"source": "ldap", "mode": "full"}, ...]
    sources       TEXT NOT NULL DEFAULT '[]',
    error         TEXT
);
CREATE INDEX sync_runs_org ON sync_runs(org_id, id);

-- What a run did (or would do, or holds back) per user.
CREATE TABLE sync_run_users (
    run_id      TEXT NOT NULL REFERENCES sync_runs(id),
    seq         BIGINT NOT NULL,
    action      TEXT NOT NULL,
    user_id     TEXT,
    external_id TEXT,
    source      TEXT NOT NULL,
    email       TEXT,
    name        TEXT,
    reason      TEXT,
    applied     BOOLEAN NOT NULL,
    -- Held-back deletes: the preserved_at the run saw (approval deletes only that preservation).
    preserved_at BIGINT,
    PRIMARY KEY (run_id, seq)
);
CREATE INDEX sync_run_users_action ON sync_run_users(run_id, action, seq);

-- One run per organization at a time, across processes: the holder renews `expires_at`.
CREATE TABLE sync_leases (
    org_id     TEXT PRIMARY KEY,
    run_id     TEXT NOT NULL,
    holder     TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);

-- Graph delta state per organization: the stored deltaLink, when the last full enumeration
-- ran, and a digest of the mappings it was taken under (a change forces a full run).
CREATE TABLE azure_sync_state (
    org_id        TEXT PRIMARY KEY REFERENCES orgs(id),
    delta_link    TEXT,
    full_at       BIGINT,
    mappings_hash TEXT,
    updated_at    BIGINT NOT NULL
);

ALTER TABLE users ADD COLUMN preserved_at BIGINT;
ALTER TABLE users ADD COLUMN deleted_at BIGINT;
-- When the status last changed (preserve, re-enable, delete): a sync run's lifecycle write only
-- applies to a user whose status has not changed since the run read it.
ALTER TABLE users ADD COLUMN status_changed_at BIGINT;
CREATE INDEX users_org_status ON users(org_id, status);

-- Lifecycle changes of users (preserve, re-enable, delete): who, when and why.
CREATE TABLE user_events (
    id       TEXT PRIMARY KEY,
    org_id   TEXT NOT NULL,
    user_id  TEXT NOT NULL,
    action   TEXT NOT NULL,
    reason   TEXT NOT NULL,
    actor    TEXT NOT NULL,
    at       BIGINT NOT NULL
);
CREATE INDEX user_events_user ON user_events(user_id, at);
