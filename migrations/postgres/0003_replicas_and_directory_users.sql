-- Directory users, the signed expiry of each token, sharded use counters and replica heartbeats.
-- The same version exists in migrations/sqlite/.

-- A directory user is one user per (source, immutable directory id); email stays unique too.
CREATE UNIQUE INDEX users_org_external ON users(org_id, source, external_id)
    WHERE external_id IS NOT NULL;

-- The `exp` claim signed into the token string. Rotation shortens `expires_at` (the grace
-- period) but the deployed string keeps its original `exp`, so re-deriving it (bundles) needs this.
ALTER TABLE tokens ADD COLUMN signed_expires_at BIGINT;
UPDATE tokens SET signed_expires_at = expires_at WHERE rotated_to IS NULL;
-- A rotated token's original lifetime is its successor's (rotation copies the lifetime).
UPDATE tokens SET signed_expires_at = CASE
        WHEN COALESCE(s.signed_expires_at, s.expires_at) IS NULL THEN NULL
        ELSE tokens.issued_at + (COALESCE(s.signed_expires_at, s.expires_at) - s.issued_at) END
FROM tokens s WHERE s.id = tokens.rotated_to;

-- Uses of tokens without max_uses, spread over a few rows so that thousands of concurrent
-- activations of one token do not queue on one row lock (PostgreSQL). SQLite's single writer
-- counts on tokens.uses directly and leaves this table empty.
CREATE TABLE token_use_counts (
    token_id TEXT NOT NULL,
    shard    BIGINT NOT NULL,
    uses     BIGINT NOT NULL,
    PRIMARY KEY (token_id, shard)
);

-- What every reader of tokens sees: the row plus its sharded uses.
CREATE VIEW token_view AS
SELECT id, org_id, version, name, kid, issuer, issued_at, expires_at, max_uses,
       uses + COALESCE((SELECT CAST(SUM(c.uses) AS BIGINT) FROM token_use_counts c
                        WHERE c.token_id = tokens.id), 0) AS uses,
       last_used_at, revoked_at, created_at, rotated_to, rotated_from, signed_expires_at
FROM tokens;

-- One row per running `imd serve`; /readyz writes it, so readiness proves the write path.
CREATE TABLE replicas (
    id         TEXT PRIMARY KEY,
    version    TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    seen_at    BIGINT NOT NULL
);
