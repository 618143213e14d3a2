-- On-premises connectors (registration, live channels), AD/LDAP mappings, organization slugs
-- and directory-outage policy, directory attributes on users, and shared password-attempt
-- counters. The same version exists in migrations/sqlite/.
-- As in 0001/0003: tables written on hot paths (connector_sessions, every heartbeat; users and
-- auth_failures, on activations) have no foreign key, so no write takes a KEY SHARE lock on an
-- organization or connector row; organizations are never deleted and connectors only retired.

-- A short public name for the organization (v2 activations name it); stored lower-case.
ALTER TABLE orgs ADD COLUMN slug TEXT;
-- What v2 activations do while no connector answers: 'refuse' | 'allow_known_users'.
ALTER TABLE orgs ADD COLUMN directory_outage TEXT NOT NULL DEFAULT 'refuse';
CREATE UNIQUE INDEX orgs_slug ON orgs(slug) WHERE slug IS NOT NULL;

-- A connector is created by an admin with a single-use registration key and then registers,
-- receiving a long-lived credential. Both secrets are stored as SHA-256 hex only.
CREATE TABLE connectors (
    id                          TEXT PRIMARY KEY,
    org_id                      TEXT NOT NULL REFERENCES orgs(id),
    name                        TEXT NOT NULL,
    -- NULL until registered, and again once retired.
    credential_hash             TEXT UNIQUE,
    -- NULL once used (single use) or retired.
    registration_key_hash       TEXT UNIQUE,
    registration_key_expires_at BIGINT,
    version                     TEXT,
    hostname                    TEXT,
    directory_kind              TEXT,
    remote_addr                 TEXT,
    registered_at               BIGINT,
    last_seen_at                BIGINT,
    created_at                  BIGINT NOT NULL,
    retired_at                  BIGINT
);
CREATE UNIQUE INDEX connectors_org_name ON connectors(org_id, name) WHERE retired_at IS NULL;

-- The live channel of each connector (a new connection replaces the old row). `forward_url`
-- is where other replicas reach the replica holding the channel.
CREATE TABLE connector_sessions (
    connector_id    TEXT PRIMARY KEY,
    org_id          TEXT NOT NULL,
    session_id      TEXT NOT NULL,
    replica_id      TEXT NOT NULL,
    forward_url     TEXT NOT NULL,
    credential_hash TEXT NOT NULL,
    connected_at    BIGINT NOT NULL,
    last_seen_at    BIGINT NOT NULL,
    in_flight       BIGINT NOT NULL DEFAULT 0,
    remote_addr     TEXT,
    version         TEXT,
    directory_kind  TEXT
);
CREATE INDEX connector_sessions_org ON connector_sessions(org_id);

-- Which directory users may activate, and with which settings: the first mapping (lowest
-- priority) a user falls under wins.
CREATE TABLE ldap_mappings (
    id             TEXT PRIMARY KEY,
    org_id         TEXT NOT NULL REFERENCES orgs(id),
    name           TEXT NOT NULL,
    priority       BIGINT NOT NULL,
    base_dn        TEXT NOT NULL,
    ou             TEXT,
    group_dn       TEXT,
    filter         TEXT,
    profile        TEXT NOT NULL,
    storage_region TEXT NOT NULL,
    quota_bytes    BIGINT,
    auto_import    BOOLEAN NOT NULL DEFAULT FALSE,
    -- 'none' | 'upn': whether a user without `mail` may use its UPN as email.
    email_fallback TEXT NOT NULL DEFAULT 'none',
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
);
-- Also the index the resolver's "mappings by priority" read uses.
CREATE UNIQUE INDEX ldap_mappings_org_priority ON ldap_mappings(org_id, priority);
CREATE UNIQUE INDEX ldap_mappings_org_name ON ldap_mappings(org_id, name);

-- Directory attributes of users, written at activation time.
ALTER TABLE users ADD COLUMN display_name TEXT;
ALTER TABLE users ADD COLUMN login TEXT;
ALTER TABLE users ADD COLUMN login_norm TEXT;
ALTER TABLE users ADD COLUMN upn TEXT;
ALTER TABLE users ADD COLUMN dn TEXT;
ALTER TABLE users ADD COLUMN department TEXT;
ALTER TABLE users ADD COLUMN country TEXT;
-- JSON array of group DNs.
ALTER TABLE users ADD COLUMN "groups" TEXT;
ALTER TABLE users ADD COLUMN mapping_id TEXT;
CREATE INDEX users_org_source_login ON users(org_id, source, login_norm);

-- Failed password attempts per key (`login:<org>:<login_norm>`, `ip:<org>:<addr>`, ...), shared
-- by every replica. A window starts at its first failure.
CREATE TABLE auth_failures (
    key          TEXT PRIMARY KEY,
    window_start BIGINT NOT NULL,
    failures     BIGINT NOT NULL
);
