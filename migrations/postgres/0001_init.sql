-- imd schema v1 for PostgreSQL, the same tables and columns as migrations/sqlite/0001_init.sql:
-- TEXT ids (UUIDv7, time-ordered, so cursor pagination can page by id), BIGINT unix seconds for
-- every timestamp, so SQL text and row types are the same on both backends.
--
-- Unlike SQLite's schema, the tables activations write (users, devices, device_mappings) carry
-- no foreign key to orgs: a roll-out activates thousands of machines of ONE organization at
-- once, and each FK check takes a KEY SHARE lock on that one org row, which PostgreSQL turns
-- into a new MultiXact per concurrent transaction (measured here: 1.9 ms of server CPU per
-- activation, most of it that). Organizations are never deleted and every write names an
-- organization the same transaction has just read, so nothing is lost.

CREATE TABLE orgs (
    id                     TEXT PRIMARY KEY,
    name                   TEXT NOT NULL,
    default_profile        TEXT NOT NULL DEFAULT 'default',
    default_storage_region TEXT NOT NULL DEFAULT 'default',
    default_quota_bytes    BIGINT,
    require_install_key    BOOLEAN NOT NULL DEFAULT FALSE,
    created_at             BIGINT NOT NULL
);

CREATE TABLE admin_keys (
    id         TEXT PRIMARY KEY,
    org_id     TEXT NOT NULL REFERENCES orgs(id),
    name       TEXT NOT NULL,
    key_hash   TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);

-- Ed25519 signing keys shared by every replica. The private key is AES-256-GCM encrypted with a
-- key derived from the master key, which never enters the database.
CREATE TABLE signing_keys (
    kid             TEXT PRIMARY KEY,
    private_key_enc TEXT NOT NULL,
    public_key      TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    retired_at      BIGINT
);

CREATE TABLE tokens (
    id           TEXT PRIMARY KEY,
    org_id       TEXT NOT NULL REFERENCES orgs(id),
    version      TEXT NOT NULL,
    name         TEXT NOT NULL,
    kid          TEXT NOT NULL REFERENCES signing_keys(kid),
    issuer       TEXT NOT NULL,
    issued_at    BIGINT NOT NULL,
    expires_at   BIGINT,
    max_uses     BIGINT,
    uses         BIGINT NOT NULL DEFAULT 0,
    last_used_at BIGINT,
    revoked_at   BIGINT,
    created_at   BIGINT NOT NULL
) WITH (fillfactor = 90); -- use counters update in place (HOT)
CREATE INDEX tokens_org ON tokens(org_id, id);

CREATE TABLE users (
    id             TEXT PRIMARY KEY,
    org_id         TEXT NOT NULL,  -- no FK: see the note at the top
    email          TEXT NOT NULL,
    email_norm     TEXT NOT NULL,
    user_name      TEXT NOT NULL,
    external_id    TEXT,
    source         TEXT NOT NULL,
    profile        TEXT NOT NULL,
    storage_region TEXT NOT NULL,
    quota_bytes    BIGINT,
    status         TEXT NOT NULL DEFAULT 'active',
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
);
CREATE UNIQUE INDEX users_org_email ON users(org_id, email_norm);
CREATE INDEX users_org_id ON users(org_id, id);

CREATE TABLE devices (
    id                TEXT PRIMARY KEY,
    org_id            TEXT NOT NULL,  -- no FK: see the note at the top
    user_id           TEXT NOT NULL REFERENCES users(id),
    name              TEXT NOT NULL,
    name_norm         TEXT NOT NULL,
    hostname          TEXT,
    hostname_norm     TEXT,
    serial            TEXT,
    serial_norm       TEXT,
    uuid              TEXT,
    uuid_norm         TEXT,
    os                TEXT,
    os_version        TEXT,
    client_version    TEXT,
    install_key_hash  TEXT,
    credential_gen    BIGINT NOT NULL DEFAULT 1,
    credential_hash   TEXT NOT NULL,
    status            TEXT NOT NULL DEFAULT 'active',
    token_id          TEXT,
    replaced_by       TEXT,
    replaces          TEXT,
    restore_data      TEXT,
    created_at        BIGINT NOT NULL,
    last_activated_at BIGINT NOT NULL,
    revoked_at        BIGINT
);
CREATE INDEX devices_org_id ON devices(org_id, id);
CREATE INDEX devices_user ON devices(user_id, status);
-- One active device per identity, enforced by the database so concurrent activations of the
-- same machine can never create two rows (see docs/device-identity.md).
CREATE UNIQUE INDEX devices_active_serial ON devices(org_id, serial_norm)
    WHERE status = 'active' AND serial_norm IS NOT NULL;
CREATE UNIQUE INDEX devices_active_uuid ON devices(org_id, uuid_norm)
    WHERE status = 'active' AND serial_norm IS NULL AND uuid_norm IS NOT NULL;
CREATE UNIQUE INDEX devices_active_hostname ON devices(org_id, hostname_norm)
    WHERE status = 'active' AND serial_norm IS NULL AND uuid_norm IS NULL;
CREATE INDEX devices_uuid ON devices(org_id, uuid_norm);

CREATE TABLE device_mappings (
    id              TEXT PRIMARY KEY,
    org_id          TEXT NOT NULL,  -- no FK: see the note at the top
    email           TEXT NOT NULL,
    email_norm      TEXT NOT NULL,
    user_name       TEXT NOT NULL,
    device_name     TEXT NOT NULL,
    identifier_type TEXT NOT NULL,
    identifier      TEXT NOT NULL,
    identifier_norm TEXT NOT NULL,
    old_device_name TEXT,
    restore_data    TEXT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    consumed_at     BIGINT,
    device_id       TEXT
);
-- At most one pending mapping per identifier: re-uploads update it in place.
CREATE UNIQUE INDEX device_mappings_pending ON device_mappings(org_id, identifier_type, identifier_norm)
    WHERE consumed_at IS NULL;
CREATE INDEX device_mappings_org_id ON device_mappings(org_id, id);

-- Audit trail: every activation attempt, failed ones included.
CREATE TABLE activations (
    id         TEXT PRIMARY KEY,
    org_id     TEXT,
    token_id   TEXT,
    created_at BIGINT NOT NULL,
    outcome    TEXT NOT NULL,
    status     BIGINT NOT NULL,
    device_id  TEXT,
    user_id    TEXT,
    hostname   TEXT,
    serial     TEXT,
    uuid       TEXT,
    login      TEXT,
    remote_ip  TEXT,
    message    TEXT
);
CREATE INDEX activations_org_id ON activations(org_id, id);
