//! The client's state directory: the install key (generated once, never printed) and, after a
//! successful activation, the device credential. Both are secrets, so the directory is 0700 and
//! the files 0600 on unix, and files are replaced atomically (temp file + rename) so a crash
//! never leaves half a credential behind.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::{Deserialize, Serialize};

pub const INSTALL_KEY_FILE: &str = "install_key";
pub const STATE_FILE: &str = "activation.json";

/// What `activate` keeps and `status` reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Activation {
    pub server: String,
    pub device_id: String,
    pub user_id: String,
    pub device_credential: String,
    /// Unix seconds of the last successful activation.
    pub activated_at: i64,
}

pub fn default_dir() -> PathBuf {
    #[cfg(windows)]
    return PathBuf::from(
        std::env::var("ProgramData").unwrap_or_else(|_| r"C:\ProgramData".to_string()),
    )
    .join("Imd")
    .join("client");
    #[cfg(target_os = "macos")]
    return PathBuf::from("/Library/Application Support/Imd");
    #[cfg(not(any(windows, target_os = "macos")))]
    PathBuf::from("/var/lib/imd-client")
}

pub fn dir_or_default(dir: Option<&Path>) -> PathBuf {
    dir.map(Path::to_path_buf).unwrap_or_else(default_dir)
}

/// Creates the directory (owner-only on unix; an existing one is tightened too).
pub fn ensure_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// A new temporary file next to `path`, created owner-only from the start (never widened).
fn private_temp(path: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let f = opts.open(&tmp)?;
    Ok((tmp, f))
}

/// Writes `bytes` to `path` with owner-only permissions, replacing it atomically.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let (tmp, mut f) = private_temp(path)?;
    let r = f
        .write_all(bytes)
        .and_then(|_| f.sync_all())
        .and_then(|_| std::fs::rename(&tmp, path));
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

/// The install key if one exists (for `--dry-run`, which must not create anything).
pub fn read_install_key(dir: &Path) -> std::io::Result<Option<String>> {
    match std::fs::read_to_string(dir.join(INSTALL_KEY_FILE)) {
        Ok(s) => Ok(Some(s.trim().to_string()).filter(|k| k.len() >= 16)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The install key, generated on first use. The server binds it to the device: a later
/// activation of the same hardware with another key is refused, so it must never change.
pub fn install_key(dir: &Path) -> std::io::Result<String> {
    if let Some(k) = read_install_key(dir)? {
        return Ok(k);
    }
    let mut raw = [0u8; 32];
    aws_lc_rs::rand::fill(&mut raw).map_err(|_| std::io::Error::other("no system randomness"))?;
    let key = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    let path = dir.join(INSTALL_KEY_FILE);
    let (tmp, mut f) = private_temp(&path)?;
    f.write_all(key.as_bytes())?;
    f.sync_all()?;
    drop(f);
    // hard_link fails if the file exists: when two clients start at once, the first key wins
    // and both use it.
    let linked = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(key),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_install_key(dir)?
            .ok_or_else(|| std::io::Error::other("install key file is empty or too short")),
        Err(e) => Err(e),
    }
}

pub fn save(dir: &Path, a: &Activation) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(a).map_err(std::io::Error::other)?;
    write_private(&dir.join(STATE_FILE), &json)
}

/// `Ok(None)` when this machine has not been activated.
pub fn load(dir: &Path) -> Result<Option<Activation>, String> {
    let path = dir.join(STATE_FILE);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| format!("{} is not a valid state file: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_key_is_generated_once_and_files_are_private() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("state");
        ensure_dir(&dir).unwrap();
        assert_eq!(read_install_key(&dir).unwrap(), None);
        let k = install_key(&dir).unwrap();
        assert_eq!(k.len(), 43);
        assert_eq!(install_key(&dir).unwrap(), k);
        let a = Activation {
            server: "http://x".into(),
            device_id: "d".into(),
            user_id: "u".into(),
            device_credential: "imd_dev_d.x".into(),
            activated_at: 1,
        };
        save(&dir, &a).unwrap();
        assert_eq!(load(&dir).unwrap().unwrap().device_id, "d");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&dir), 0o700);
            assert_eq!(mode(&dir.join(INSTALL_KEY_FILE)), 0o600);
            assert_eq!(mode(&dir.join(STATE_FILE)), 0o600);
        }
        // Only the two files: no temp files left behind.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2);
    }
}
