-- Entra ID (Azure AD) through Microsoft Graph: one app registration per organization and the
-- Azure AD mappings the v5 resolver applies. The same version exists in migrations/postgres/.

-- The organization's app registration. `client_secret_enc` is sealed with the master key
-- (AAD "azure:<org_id>") before it reaches the store; the plaintext is never stored.
CREATE TABLE azure_config (
    org_id            TEXT PRIMARY KEY REFERENCES orgs(id),
    tenant_id         TEXT NOT NULL,
    client_id         TEXT NOT NULL,
    client_secret_enc TEXT NOT NULL,
    authority_url     TEXT NOT NULL,
    graph_url         TEXT NOT NULL,
    -- Whether guests (userType = Guest) may activate.
    allow_guests      BOOLEAN NOT NULL DEFAULT FALSE,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL
);

-- Which Entra ID users may activate, and with which settings: the first mapping (lowest
-- priority) a user falls under wins. A mapping matches a group (transitive membership) or an
-- attribute value.
CREATE TABLE azure_mappings (
    id             TEXT PRIMARY KEY,
    org_id         TEXT NOT NULL REFERENCES orgs(id),
    name           TEXT NOT NULL,
    priority       BIGINT NOT NULL,
    -- 'group' (group_id set) | 'attribute' (attribute and value set).
    source_kind    TEXT NOT NULL,
    group_id       TEXT,
    attribute      TEXT,
    value          TEXT,
    profile        TEXT NOT NULL,
    storage_region TEXT NOT NULL,
    quota_bytes    BIGINT,
    auto_import    BOOLEAN NOT NULL DEFAULT FALSE,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
);
-- Also the index the resolver's "mappings by priority" read uses.
CREATE UNIQUE INDEX azure_mappings_org_priority ON azure_mappings(org_id, priority);
CREATE UNIQUE INDEX azure_mappings_org_name ON azure_mappings(org_id, name);
