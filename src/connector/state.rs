//! The connector's state directory: the service URL and identity (`connector.json`) and the
//! credential (`credential`), both written 0600 through a temporary file and a rename, so a
//! crash never leaves half a credential. `register` trades a registration key for them.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::channel::check_server_url;
use super::proto::{self, RegisterRequest, RegisterResponse};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Identity {
    pub server: String,
    pub connector_id: String,
    pub org_id: String,
    pub name: String,
    pub registered_at: String,
}

const IDENTITY_FILE: &str = "connector.json";
const CREDENTIAL_FILE: &str = "credential";

pub struct State {
    pub identity: Identity,
    pub credential: String,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("identity", &self.identity)
            .field("credential", &"<redacted>")
            .finish()
    }
}

fn io(path: &Path, e: std::io::Error) -> StateError {
    StateError::Io(format!("{}: {e}", path.display()))
}

/// Writes `contents` to `dir/name` readable by the owner only, atomically.
fn write_private(dir: &Path, name: &str, contents: &[u8]) -> Result<(), StateError> {
    use std::io::Write;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| io(dir, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o600))
            .map_err(|e| io(tmp.path(), e))?;
    }
    tmp.write_all(contents).map_err(|e| io(tmp.path(), e))?;
    tmp.as_file().sync_all().map_err(|e| io(tmp.path(), e))?;
    let target = dir.join(name);
    tmp.persist(&target).map_err(|e| io(&target, e.error))?;
    Ok(())
}

fn ensure_dir(dir: &Path) -> Result<(), StateError> {
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| io(dir, e))?;
        }
    }
    Ok(())
}

/// Reads the state a `register` left; refuses a credential file others can read.
pub fn load(dir: &Path) -> Result<State, StateError> {
    let cred_path = dir.join(CREDENTIAL_FILE);
    let id_path = dir.join(IDENTITY_FILE);
    if !cred_path.exists() || !id_path.exists() {
        return Err(StateError::Invalid(format!(
            "{} holds no registration; run `imd connector register --server URL --key KEY --state-dir {}` first",
            dir.display(),
            dir.display()
        )));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&cred_path)
            .map_err(|e| io(&cred_path, e))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(StateError::Invalid(format!(
                "{} has permissions {:o}; run `chmod 600` on it",
                cred_path.display(),
                mode & 0o777
            )));
        }
    }
    let credential = std::fs::read_to_string(&cred_path)
        .map_err(|e| io(&cred_path, e))?
        .trim()
        .to_string();
    if !credential.starts_with(proto::CREDENTIAL_PREFIX) {
        return Err(StateError::Invalid(format!(
            "{} does not hold a connector credential",
            cred_path.display()
        )));
    }
    let identity: Identity =
        serde_json::from_slice(&std::fs::read(&id_path).map_err(|e| io(&id_path, e))?)
            .map_err(|e| StateError::Invalid(format!("{}: {e}", id_path.display())))?;
    Ok(State {
        identity,
        credential,
    })
}

pub fn state_path(dir: &Path) -> PathBuf {
    dir.join(CREDENTIAL_FILE)
}

/// Trades a registration key for the connector credential and saves both files. Registering
/// again (a fresh key from the admin) replaces the saved credential; the service retires the
/// old one at the same moment.
pub async fn register(
    server: &str,
    key: &str,
    dir: &Path,
    tls: std::sync::Arc<rustls::ClientConfig>,
    version: &str,
    now_rfc3339: String,
) -> Result<Identity, StateError> {
    let url = check_server_url(server).map_err(|e| StateError::Invalid(e.to_string()))?;
    ensure_dir(dir)?;
    let client = reqwest::Client::builder()
        .use_preconfigured_tls((*tls).clone())
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|e| StateError::Io(e.to_string()))?;
    let mut endpoint = url.clone();
    endpoint.set_path(proto::REGISTER_PATH);
    let hostname = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty());
    let resp = client
        .post(endpoint)
        .json(&RegisterRequest {
            registration_key: key.trim().to_string(),
            version: version.to_string(),
            hostname,
        })
        .send()
        .await
        .map_err(|e| StateError::Io(format!("cannot reach {server}: {e}")))?;
    let status = resp.status();
    if !status.is_success() {
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        let msg = body["message"].as_str().unwrap_or("no message").to_string();
        return Err(StateError::Refused(format!(
            "registration refused ({status}): {msg}"
        )));
    }
    let r: RegisterResponse = resp
        .json()
        .await
        .map_err(|e| StateError::Io(format!("unreadable answer from {server}: {e}")))?;
    let identity = Identity {
        server: url.as_str().trim_end_matches('/').to_string(),
        connector_id: r.connector_id,
        org_id: r.org_id,
        name: r.name,
        registered_at: now_rfc3339,
    };
    // The credential first: an identity without its credential is useless, the reverse is
    // repaired by registering again.
    write_private(dir, CREDENTIAL_FILE, r.credential.as_bytes())?;
    let json = serde_json::to_vec_pretty(&identity).map_err(|e| StateError::Io(e.to_string()))?;
    write_private(dir, IDENTITY_FILE, &json)?;
    Ok(identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_files_are_private_and_load_back() {
        let dir = tempfile::tempdir().unwrap();
        write_private(dir.path(), CREDENTIAL_FILE, b"imdc_secret").unwrap();
        let id = Identity {
            server: "https://imd.example.com".into(),
            connector_id: "c1".into(),
            org_id: "o1".into(),
            name: "dc-berlin".into(),
            registered_at: "2026-12-01T00:00:00Z".into(),
        };
        write_private(dir.path(), IDENTITY_FILE, &serde_json::to_vec(&id).unwrap()).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let m = std::fs::metadata(dir.path().join(CREDENTIAL_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(m & 0o777, 0o600);
            let s = load(dir.path()).unwrap();
            assert_eq!(s.credential, "imdc_secret");
            assert_eq!(s.identity.connector_id, "c1");
            assert!(!format!("{s:?}").contains("imdc_secret"));
            std::fs::set_permissions(
                dir.path().join(CREDENTIAL_FILE),
                std::fs::Permissions::from_mode(0o644),
            )
            .unwrap();
            assert!(
                load(dir.path())
                    .unwrap_err()
                    .to_string()
                    .contains("chmod 600")
            );
        }
    }

    #[test]
    fn an_empty_state_dir_says_to_register() {
        let dir = tempfile::tempdir().unwrap();
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("imd connector register"), "{e}");
    }
}
