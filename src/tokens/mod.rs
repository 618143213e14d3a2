//! Server side of mass-deployment tokens: the signing-key ring (encrypted in the database, shared by
//! every replica, rotatable), minting, re-deriving a token string from its row, and verification
//! with a cache. Thousands of machines present the *same* token, so a verified token string is
//! remembered and the Ed25519 check runs once per token, not once per activation; revocation,
//! expiry and use counts are still checked against the database on every activation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use imd_tokens::{Claims, ImdVersion, PublicKey, SigningKey, TokenError, Verifier};

use crate::crypto::{CryptoError, MasterKey};
use crate::store::{NewToken, Rotation, SigningKeyRow, Store, StoreError, TokenRow, new_id};

/// Leeway for `exp`/`iat` between replicas' clocks.
pub const LEEWAY_SECONDS: u64 = 60;
const CACHE_CAPACITY: usize = 10_000;

/// Why a presented token was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The key ring could not be checked against the database.
    #[error(transparent)]
    Store(StoreError),
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("signing key: {0}")]
    Token(#[from] TokenError),
    #[error("no signing key {0} in the database")]
    MissingKey(String),
}

struct Ring {
    verifier: Verifier,
    /// kid → private key; the newest unretired one signs.
    signing: HashMap<String, Arc<SigningKey>>,
    current: Option<String>,
    public: Vec<PublicKey>,
    loaded_at: i64,
}

pub struct TokenService {
    store: Store,
    master: Arc<MasterKey>,
    issuer: String,
    ring: RwLock<Ring>,
    cache: Mutex<HashMap<String, Claims>>,
}

impl std::fmt::Debug for TokenService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenService")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

/// Creates the first signing key if the database has none.
pub async fn ensure_signing_key(
    store: &Store,
    master: &MasterKey,
    now: i64,
) -> Result<(), KeyError> {
    if store.signing_keys().await?.is_empty() {
        let row = new_key_row(master, now)?;
        store.insert_first_signing_key(&row).await?;
    }
    Ok(())
}

/// `imd keys rotate`: a new key signs from now on; older keys keep verifying the tokens they signed.
pub async fn rotate(store: &Store, master: &MasterKey, now: i64) -> Result<String, KeyError> {
    let row = new_key_row(master, now)?;
    store.rotate_signing_key(&row, now).await?;
    Ok(row.kid)
}

fn new_key_row(master: &MasterKey, now: i64) -> Result<SigningKeyRow, KeyError> {
    let kid = new_id();
    let key = SigningKey::generate(kid.clone())?;
    Ok(SigningKeyRow {
        private_key_enc: master.seal(&kid, key.pkcs8_der())?,
        public_key: STANDARD.encode(key.public_key().raw()),
        kid,
        created_at: now,
        retired_at: None,
    })
}

fn load_ring(
    rows: &[SigningKeyRow],
    master: &MasterKey,
    issuer: &str,
    now: i64,
) -> Result<Ring, KeyError> {
    let mut signing = HashMap::new();
    let mut public = Vec::new();
    let mut current = None;
    for r in rows {
        let der = master.open(&r.kid, &r.private_key_enc)?;
        let key = SigningKey::from_pkcs8(r.kid.clone(), &der)?;
        public.push(key.public_key());
        if r.retired_at.is_none() {
            current = Some(r.kid.clone());
        }
        signing.insert(r.kid.clone(), Arc::new(key));
    }
    let verifier = Verifier::new(public.clone())
        .with_leeway(LEEWAY_SECONDS)
        .with_issuer(issuer);
    Ok(Ring {
        verifier,
        signing,
        current,
        public,
        loaded_at: now,
    })
}

impl TokenService {
    pub async fn load(
        store: Store,
        master: Arc<MasterKey>,
        issuer: String,
        now: i64,
    ) -> Result<TokenService, KeyError> {
        let rows = store.signing_keys().await?;
        let ring = load_ring(&rows, &master, &issuer, now)?;
        Ok(TokenService {
            store,
            master,
            issuer,
            ring: RwLock::new(ring),
            cache: Mutex::new(HashMap::new()),
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The kid new tokens are signed with.
    pub fn current_kid(&self) -> Option<String> {
        self.ring.read().expect("ring lock").current.clone()
    }

    /// Re-reads the key ring (another process may have rotated). At most once per second, so
    /// tokens with made-up kids cannot turn into a database flood.
    async fn reload(&self, now: i64, force: bool) -> Result<(), KeyError> {
        if !force && self.ring.read().expect("ring lock").loaded_at >= now {
            return Ok(());
        }
        let rows = self.store.signing_keys().await?;
        let ring = load_ring(&rows, &self.master, &self.issuer, now)?;
        *self.ring.write().expect("ring lock") = ring;
        Ok(())
    }

    /// Picks up keys rotated by another process (rate-limited like `reload`).
    pub async fn refresh(&self, now: i64) -> Result<(), KeyError> {
        self.reload(now, false).await
    }

    /// Public keys as a JWKS document (published at `/api/v1/keys`).
    pub fn jwks(&self) -> serde_json::Value {
        let ring = self.ring.read().expect("ring lock");
        serde_json::json!({ "keys": ring.public.iter().map(PublicKey::to_jwk).collect::<Vec<_>>() })
    }

    /// The key new tokens are signed with, after picking up rotations by other processes.
    async fn signing_kid(&self, now: i64) -> Result<String, KeyError> {
        self.reload(now, true).await?;
        self.ring
            .read()
            .expect("ring lock")
            .current
            .clone()
            .ok_or_else(|| KeyError::MissingKey("(active)".into()))
    }

    /// Mints a token: the row first (so the jti exists before the string does), then the string.
    pub async fn mint(
        &self,
        org_id: &str,
        version: ImdVersion,
        name: &str,
        expires_at: Option<i64>,
        max_uses: Option<i64>,
        now: i64,
    ) -> Result<(TokenRow, String), KeyError> {
        let kid = self.signing_kid(now).await?;
        let id = new_id();
        let row = self
            .store
            .insert_token(&NewToken {
                id: &id,
                org_id,
                version: version.as_str(),
                name,
                kid: &kid,
                issuer: &self.issuer,
                issued_at: now,
                expires_at,
                max_uses,
            })
            .await?;
        let token = self.token_string(&row)?;
        Ok((row, token))
    }

    /// Mints a successor with the same settings (version, name, max_uses, lifetime) and lets the
    /// predecessor live on for `grace` seconds, so scripts already deployed keep working while the
    /// new token rolls out. `Ok(None)`: revoked or already rotated.
    pub async fn rotate(
        &self,
        org_id: &str,
        id: &str,
        grace: i64,
        now: i64,
    ) -> Result<Option<(Rotation, String)>, KeyError> {
        let kid = self.signing_kid(now).await?;
        let old = self.store.token(org_id, id).await?;
        let lifetime = old.expires_at.map(|e| e - old.issued_at);
        let new_id = new_id();
        let successor = NewToken {
            id: &new_id,
            org_id,
            version: &old.version,
            name: &old.name,
            kid: &kid,
            issuer: &self.issuer,
            issued_at: now,
            expires_at: lifetime.map(|l| now + l),
            max_uses: old.max_uses,
        };
        let Some(rotation) = self
            .store
            .rotate_token(org_id, id, &successor, now + grace)
            .await?
        else {
            return Ok(None);
        };
        let token = self.token_string(&rotation.successor)?;
        Ok(Some((rotation, token)))
    }

    /// `token_string`, reloading the key ring first if it lacks the row's key (another replica or
    /// `imd keys rotate` added it since this process loaded the ring).
    pub async fn token_string_fresh(&self, row: &TokenRow, now: i64) -> Result<String, KeyError> {
        match self.token_string(row) {
            Err(KeyError::MissingKey(_)) => {
                self.reload(now, true).await?;
                self.token_string(row)
            }
            other => other,
        }
    }

    /// The token string for a stored row. Ed25519 signatures are deterministic, so this is the
    /// exact string handed out at minting, re-derivable later without ever storing it.
    pub fn token_string(&self, row: &TokenRow) -> Result<String, KeyError> {
        let key = self
            .ring
            .read()
            .expect("ring lock")
            .signing
            .get(&row.kid)
            .cloned()
            .ok_or_else(|| KeyError::MissingKey(row.kid.clone()))?;
        let version = ImdVersion::parse(&row.version)?;
        let claims = Claims::new(
            row.issuer.clone(),
            row.org_id.clone(),
            row.id.clone(),
            version,
            row.issued_at,
            // The expiry signed at minting: a rotated token's row carries a shorter
            // `expires_at` (its grace period), but the string deployed is the original.
            row.signed_expires_at,
        );
        Ok(key.sign(&claims)?)
    }

    /// Verifies a presented token (signature, audience, issuer, expiry at `now`).
    pub async fn verify(&self, token: &str, now: i64) -> Result<Claims, VerifyError> {
        let r = self.verify_uncounted(token, now).await;
        let result = match &r {
            Ok(_) => "valid",
            Err(VerifyError::Token(TokenError::Expired { .. })) => "expired",
            Err(VerifyError::Token(_)) => "invalid",
            Err(_) => "error",
        };
        crate::metrics::TOKEN_VERIFICATIONS.inc(&[result]);
        r
    }

    async fn verify_uncounted(&self, token: &str, now: i64) -> Result<Claims, VerifyError> {
        if let Some(c) = self.cache.lock().expect("cache lock").get(token).cloned() {
            crate::metrics::TOKEN_CACHE_HITS.inc(&[]);
            return match c.exp {
                Some(exp) if now >= exp + LEEWAY_SECONDS as i64 => {
                    Err(TokenError::Expired { exp }.into())
                }
                _ => Ok(c),
            };
        }
        let result = self
            .ring
            .read()
            .expect("ring lock")
            .verifier
            .verify(token, now);
        let claims = match result {
            Err(TokenError::UnknownKey(Some(kid))) => {
                // Possibly rotated in by another process since we loaded the ring: a kid that
                // exists in the database is never refused. One primary-key look-up decides, so
                // made-up kids cost a cheap read, not a ring reload.
                match self.store.signing_key_exists(&kid).await {
                    Ok(true) => match self.reload(now, true).await {
                        Ok(()) => {}
                        // The key exists; failing to load it is ours to retry, not a refusal.
                        Err(KeyError::Store(e)) => return Err(VerifyError::Store(e)),
                        Err(e) => {
                            tracing::error!(error = %e, "reloading signing keys failed");
                            return Err(VerifyError::Store(StoreError::Internal(e.to_string())));
                        }
                    },
                    Ok(false) => return Err(TokenError::UnknownKey(Some(kid)).into()),
                    // Cannot tell: a retryable error, not a refusal.
                    Err(e) => return Err(VerifyError::Store(e)),
                }
                self.ring
                    .read()
                    .expect("ring lock")
                    .verifier
                    .verify(token, now)?
            }
            other => other?,
        };
        let mut cache = self.cache.lock().expect("cache lock");
        if cache.len() >= CACHE_CAPACITY {
            cache.clear();
        }
        cache.insert(token.to_string(), claims.clone());
        Ok(claims)
    }
}
