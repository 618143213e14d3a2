//! Secrets at rest and on the wire: the master key file, encryption of signing keys, hashing of
//! high-entropy secrets (admin keys, device credentials, install keys) and constant-time checks.
//! High-entropy secrets are hashed with SHA-256, never a password hash: they cannot be guessed, and
//! a slow hash would cost milliseconds on every activation.

use std::io::Write;
use std::path::Path;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::{constant_time, digest, hmac};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("master key file {path}: {message}")]
    MasterKey { path: String, message: String },
    #[error("cannot decrypt stored key material (wrong master key?)")]
    Decrypt,
    #[error("random number generator failed")]
    Random,
}

/// 32 bytes that never enter the database. Everything else is derived from it by purpose.
pub struct MasterKey([u8; 32]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// Reads the key file, or creates it (mode 0600) when missing. A file readable by group or
    /// others is refused: whoever reads it can decrypt every signing key.
    pub fn load_or_create(path: &Path) -> Result<MasterKey, CryptoError> {
        let err = |message: String| CryptoError::MasterKey {
            path: path.display().to_string(),
            message,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => {
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    let mode = std::fs::metadata(path)
                        .map_err(|e| err(e.to_string()))?
                        .permissions()
                        .mode();
                    if mode & 0o077 != 0 {
                        return Err(err(format!(
                            "permissions {:o} are too open; run `chmod 600 {}`",
                            mode & 0o777,
                            path.display()
                        )));
                    }
                }
                Self::from_base64(text.trim()).map_err(|m| err(m.to_string()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                SystemRandom::new()
                    .fill(&mut key)
                    .map_err(|_| CryptoError::Random)?;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
                }
                // Written in full to a private temporary file, then linked into place without
                // overwriting: replicas starting together on one data directory all end up with
                // the one key that won, and nobody ever reads a half-written file.
                let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
                let mut tmp = tempfile::Builder::new()
                    .prefix(".master-key-")
                    .tempfile_in(dir.unwrap_or(Path::new(".")))
                    .map_err(|e| err(e.to_string()))?;
                writeln!(tmp, "{}", STANDARD.encode(key)).map_err(|e| err(e.to_string()))?;
                tmp.as_file().sync_all().map_err(|e| err(e.to_string()))?;
                match std::fs::hard_link(tmp.path(), path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        return Self::load_or_create(path);
                    }
                    Err(e) => return Err(err(e.to_string())),
                }
                Ok(MasterKey(key))
            }
            Err(e) => Err(err(e.to_string())),
        }
    }

    pub fn from_base64(s: &str) -> Result<MasterKey, &'static str> {
        let bytes = STANDARD.decode(s).map_err(|_| "master key is not base64")?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| "master key must be 32 bytes")?;
        Ok(MasterKey(key))
    }

    fn derive(&self, purpose: &str) -> [u8; 32] {
        let k = hmac::Key::new(hmac::HMAC_SHA256, &self.0);
        let tag = hmac::sign(&k, purpose.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Encrypts key material; `aad` binds the ciphertext to its row (the kid) so rows cannot be swapped.
    pub fn seal(&self, aad: &str, plaintext: &[u8]) -> Result<String, CryptoError> {
        let key = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &self.derive("imd key-encryption v1"))
                .map_err(|_| CryptoError::Random)?,
        );
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| CryptoError::Random)?;
        let mut buf = plaintext.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad.as_bytes()),
            &mut buf,
        )
        .map_err(|_| CryptoError::Random)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(STANDARD.encode(out))
    }

    pub fn open(&self, aad: &str, sealed: &str) -> Result<Vec<u8>, CryptoError> {
        let key = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &self.derive("imd key-encryption v1"))
                .map_err(|_| CryptoError::Decrypt)?,
        );
        let raw = STANDARD.decode(sealed).map_err(|_| CryptoError::Decrypt)?;
        if raw.len() < NONCE_LEN {
            return Err(CryptoError::Decrypt);
        }
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Decrypt)?;
        let mut buf = ct.to_vec();
        let plain = key
            .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut buf)
            .map_err(|_| CryptoError::Decrypt)?;
        Ok(plain.to_vec())
    }

    /// The key replicas sign calls they forward to each other with (they share the master key).
    pub fn cluster_key(&self) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, &self.derive("imd cluster-forward v1"))
    }

    /// The key device credentials are derived with (see [`CredentialKey`]).
    pub fn credential_key(&self) -> CredentialKey {
        CredentialKey(hmac::Key::new(
            hmac::HMAC_SHA256,
            &self.derive("imd device-credential v1"),
        ))
    }
}

/// Device credentials are `HMAC(key, device_id:generation)`. Deriving instead of storing them lets a
/// repeated activation return the very same credential (true idempotence) while the database holds
/// only its SHA-256; bumping the generation revokes it.
#[derive(Clone)]
pub struct CredentialKey(hmac::Key);

impl std::fmt::Debug for CredentialKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CredentialKey(..)")
    }
}

pub const DEVICE_CREDENTIAL_PREFIX: &str = "imd_dev_";
pub const ADMIN_KEY_PREFIX: &str = "imd_adm_";

impl CredentialKey {
    /// `imd_dev_<device id>.<tag>`: the id makes authentication a primary-key look-up (no index
    /// over random hashes to maintain on every activation); the tag is the secret.
    pub fn device_credential(&self, device_id: &str, generation: i64) -> String {
        let tag = hmac::sign(&self.0, format!("{device_id}:{generation}").as_bytes());
        format!(
            "{DEVICE_CREDENTIAL_PREFIX}{device_id}.{}",
            URL_SAFE_NO_PAD.encode(tag.as_ref())
        )
    }
}

/// The device id a credential names (not proof of anything until its hash is checked).
pub fn credential_device_id(credential: &str) -> Option<&str> {
    let rest = credential.strip_prefix(DEVICE_CREDENTIAL_PREFIX)?;
    let (id, tag) = rest.split_once('.')?;
    (!id.is_empty() && !tag.is_empty() && id.len() <= 64).then_some(id)
}

/// A fresh random secret with a recognisable prefix (so leaked keys can be found by scanners).
pub fn random_secret(prefix: &str) -> Result<String, CryptoError> {
    let mut b = [0u8; 32];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| CryptoError::Random)?;
    Ok(format!("{prefix}{}", URL_SAFE_NO_PAD.encode(b)))
}

/// Hex SHA-256: how high-entropy secrets are stored and looked up.
pub fn sha256_hex(secret: &str) -> String {
    hex::encode(digest::digest(&digest::SHA256, secret.as_bytes()))
}

pub fn ct_eq(a: &str, b: &str) -> bool {
    constant_time::verify_slices_are_equal(a.as_bytes(), b.as_bytes()).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_key_file_is_created_0600_and_reloads_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/master.key");
        let a = MasterKey::load_or_create(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let b = MasterKey::load_or_create(&path).unwrap();
        assert_eq!(a.0, b.0);
    }

    #[cfg(unix)]
    #[test]
    fn master_key_file_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        MasterKey::load_or_create(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = MasterKey::load_or_create(&path).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
    }

    #[test]
    fn sealed_key_material_opens_only_with_the_same_aad_and_key() {
        let k = MasterKey([7u8; 32]);
        let sealed = k.seal("kid-1", b"secret").unwrap();
        assert_eq!(k.open("kid-1", &sealed).unwrap(), b"secret");
        assert!(k.open("kid-2", &sealed).is_err());
        assert!(MasterKey([8u8; 32]).open("kid-1", &sealed).is_err());
        assert!(!sealed.contains("secret"));
    }

    #[test]
    fn device_credentials_are_deterministic_per_generation() {
        let k = MasterKey([1u8; 32]).credential_key();
        assert_eq!(k.device_credential("d1", 1), k.device_credential("d1", 1));
        assert_ne!(k.device_credential("d1", 1), k.device_credential("d1", 2));
        assert_ne!(k.device_credential("d1", 1), k.device_credential("d2", 1));
        assert!(
            k.device_credential("d1", 1)
                .starts_with(DEVICE_CREDENTIAL_PREFIX)
        );
        assert_eq!(
            credential_device_id(&k.device_credential("d1", 7)),
            Some("d1")
        );
        assert_eq!(credential_device_id("imd_dev_nodot"), None);
        assert_eq!(credential_device_id("imd_adm_x.y"), None);
    }

    #[test]
    fn random_secrets_differ_and_hash_stably() {
        let a = random_secret("p_").unwrap();
        let b = random_secret("p_").unwrap();
        assert_ne!(a, b);
        assert_eq!(sha256_hex(&a), sha256_hex(&a));
        assert_eq!(sha256_hex(&a).len(), 64);
        assert!(ct_eq(&a, &a.clone()));
        assert!(!ct_eq(&a, &b));
    }
}
