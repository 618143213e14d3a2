//! Deployment bundles: everything an IT admin needs to push a server URL and
//! a mass-deployment token to many machines with Group Policy, a `.reg` file,
//! a startup script, Intune or Jamf.
//!
//! [`build`] validates the token and options first and produces nothing on
//! failure; every file is then rendered in memory, deterministically (the
//! same token and options give byte-identical files). [`write_dir`] and
//! [`to_zip`] put the result on disk or into a zip archive.

mod admx;
mod cmd;
pub mod escape;
mod macos;
mod powershell;
mod readme;
mod reg;

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::Path;

use aws_lc_rs::digest;

use crate::cli::rfc3339;
use crate::{TokenError, decode_unverified};

/// Tokens expiring sooner than this get a warning.
const WARN_WITHIN_SECS: i64 = 30 * 86_400;
/// Longest server URL accepted (also the ADMX `maxLength` of its text box).
pub(crate) const MAX_SERVER_LEN: usize = 2048;

/// Bundle paths, relative, with `/` separators.
pub const ADMX_PATH: &str = "imd.admx";
pub const ADML_PATH: &str = "en-US/imd.adml";
pub const REG_PATH: &str = "imd-token.reg";
pub const PS1_PATH: &str = "Install-Imd.ps1";
pub const CMD_PATH: &str = "install.cmd";
pub const MOBILECONFIG_PATH: &str = "imd.mobileconfig";
pub const PLIST_PATH: &str = "imd.plist";
pub const INTUNE_PLIST_PATH: &str = "imd-intune.plist";
pub const README_PATH: &str = "README.txt";

/// Top folder of every entry in [`to_zip`] archives.
pub const ZIP_ROOT: &str = "imd-bundle/";

/// Caller-chosen names and the current time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleOptions {
    /// Registry/policy vendor name (`Software\Policies\<vendor>\IMD`,
    /// preference domain `com.<vendor lowercase>.imd`): ASCII letters and
    /// digits, 1 to 64 of them.
    pub vendor: String,
    /// File name of the Windows agent installer, next to the scripts.
    pub msi: String,
    /// File name of the macOS agent installer package.
    pub pkg: String,
    /// Current unix time in seconds, for the expiry checks.
    pub now: i64,
}

impl Default for BundleOptions {
    fn default() -> Self {
        BundleOptions {
            vendor: "Imd".into(),
            msi: "imd-agent.msi".into(),
            pkg: "imd-agent.pkg".into(),
            now: 0,
        }
    }
}

/// One file of a bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleFile {
    /// Relative path with `/` separators, e.g. `en-US/imd.adml`.
    pub path: String,
    pub contents: Vec<u8>,
}

/// A rendered bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bundle {
    pub files: Vec<BundleFile>,
    /// Human-readable warnings (plain http, expiry within 30 days).
    pub warnings: Vec<String>,
    /// The activation server URL, taken from the token's `iss`.
    pub server: String,
    /// The token's `exp`, if any.
    pub expires_at: Option<i64>,
}

impl Bundle {
    /// The file at `path`, if the bundle has one.
    pub fn file(&self, path: &str) -> Option<&BundleFile> {
        self.files.iter().find(|f| f.path == path)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The token is not a well-formed imd token, or uses characters outside
    /// `[A-Za-z0-9_.-]`.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The token has expired (`now >= exp`).
    #[error("token expired at {} (exp {exp})", rfc3339(*exp))]
    Expired { exp: i64 },
    /// The token's `iss` is not a usable absolute http(s) URL.
    #[error("bad server URL in the token's iss: {0}")]
    BadServer(String),
    /// A [`BundleOptions`] field is invalid.
    #[error("bad option: {0}")]
    BadOption(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Everything the renderers need, validated.
pub(crate) struct Ctx<'a> {
    pub token: &'a str,
    pub server: &'a str,
    pub vendor: &'a str,
    pub msi: &'a str,
    pub pkg: &'a str,
    pub expires_at: Option<i64>,
}

impl Ctx<'_> {
    /// Hive-less policy key, as in the ADMX.
    pub fn policy_key(&self) -> String {
        format!(r"Software\Policies\{}\IMD", self.vendor)
    }

    /// macOS preference domain.
    pub fn domain(&self) -> String {
        format!("com.{}.imd", self.vendor.to_ascii_lowercase())
    }

    /// "2025-07-10T15:06:40Z" or "never".
    pub fn expiry_text(&self) -> String {
        self.expires_at.map_or_else(|| "never".into(), rfc3339)
    }
}

/// Validates `token` and `opts`, then renders every bundle file.
pub fn build(token: &str, opts: &BundleOptions) -> Result<Bundle, BundleError> {
    // Caller mistakes first, then the token.
    check_vendor(&opts.vendor)?;
    check_file_name("msi", &opts.msi)?;
    check_file_name("pkg", &opts.pkg)?;
    check_token_charset(token)?;
    let unverified = decode_unverified(token)?;
    let claims = unverified.claims;
    let mut warnings = Vec::new();
    if let Some(exp) = claims.exp {
        let left = exp.saturating_sub(opts.now);
        if left <= 0 {
            return Err(BundleError::Expired { exp });
        }
        if left < WARN_WITHIN_SECS {
            warnings.push(format!(
                "token expires within 30 days, on {}; plan a replacement bundle before then",
                rfc3339(exp)
            ));
        }
    }
    if check_server(&claims.iss)? {
        warnings.push(format!(
            "server {} uses plain http: the token travels unencrypted",
            claims.iss
        ));
    }

    let ctx = Ctx {
        token,
        server: &claims.iss,
        vendor: &opts.vendor,
        msi: &opts.msi,
        pkg: &opts.pkg,
        expires_at: claims.exp,
    };
    let text = |path: &str, s: String| BundleFile {
        path: path.into(),
        contents: s.into_bytes(),
    };
    let files = vec![
        text(ADMX_PATH, admx::admx(&ctx)),
        text(ADML_PATH, admx::adml(&ctx)),
        BundleFile {
            path: REG_PATH.into(),
            contents: reg::reg_file(&ctx),
        },
        // UTF-8 BOM: Windows PowerShell 5.1 reads BOM-less scripts as ANSI.
        text(
            PS1_PATH,
            format!("\u{FEFF}{}", powershell::script(&ctx).replace('\n', "\r\n")),
        ),
        text(CMD_PATH, cmd::script(&ctx)),
        text(MOBILECONFIG_PATH, macos::mobileconfig(&ctx)),
        text(PLIST_PATH, macos::plist(&ctx)),
        text(INTUNE_PLIST_PATH, macos::intune_plist(&ctx)),
        text(README_PATH, readme::readme(&ctx)),
    ];
    Ok(Bundle {
        files,
        warnings,
        server: claims.iss.clone(),
        expires_at: claims.exp,
    })
}

fn check_token_charset(token: &str) -> Result<(), TokenError> {
    if token.is_empty() {
        return Err(TokenError::Malformed("empty token".into()));
    }
    if let Some(c) = token
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(TokenError::Malformed(format!(
            "token contains {c:?}; only A-Z a-z 0-9 _ . - are allowed"
        )));
    }
    Ok(())
}

/// Checks the server URL; returns `true` when it is plain http.
///
/// Accepts `http://` or `https://` (scheme case-insensitive), a non-empty
/// host, no userinfo, and only RFC 3986 URL characters, which excludes
/// whitespace, `"`, `<`, `>`, `\`, `^`, `` ` ``, `{`, `|`, `}`.
pub(crate) fn check_server(url: &str) -> Result<bool, BundleError> {
    let bad = |why: &str| Err(BundleError::BadServer(format!("{url:?}: {why}")));
    if url.len() > MAX_SERVER_LEN {
        return bad("longer than 2048 characters");
    }
    let lower = url.to_ascii_lowercase();
    let (plain, rest) = if lower.starts_with("https://") {
        (false, &url[8..])
    } else if lower.starts_with("http://") {
        (true, &url[7..])
    } else {
        return bad("not an absolute http:// or https:// URL");
    };
    if let Some(c) = url
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-._~:/?#[]@!$&'()*+,;=%".contains(*c)))
    {
        return bad(&format!("character {c:?} is not allowed in a URL"));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return bad("credentials in the URL are not allowed");
    }
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.split(':').next().unwrap_or(""),
    };
    if host.is_empty() {
        return bad("no host");
    }
    Ok(plain)
}

fn check_vendor(vendor: &str) -> Result<(), BundleError> {
    if vendor.is_empty() || vendor.len() > 64 || !vendor.chars().all(|c| c.is_ascii_alphanumeric())
    {
        return Err(BundleError::BadOption(format!(
            "vendor {vendor:?} must be 1 to 64 ASCII letters and digits"
        )));
    }
    Ok(())
}

/// A plain file name usable on Windows and macOS and safe to put inside
/// quotes in PowerShell, cmd and XML.
fn check_file_name(what: &str, name: &str) -> Result<(), BundleError> {
    let bad = |why: &str| {
        Err(BundleError::BadOption(format!(
            "{what} file name {name:?}: {why}"
        )))
    };
    if name.is_empty() || name.len() > 255 {
        return bad("must be 1 to 255 bytes");
    }
    if let Some(c) = name
        .chars()
        .find(|c| c.is_control() || "/\\\"'`%<>:|?*".contains(*c))
    {
        return bad(&format!("must be a plain file name without {c:?}"));
    }
    if name.starts_with(['.', ' ']) || name.ends_with(['.', ' ']) {
        return bad("must not start or end with a dot or space");
    }
    Ok(())
}

/// A v4-format UUID (uppercase, hyphenated) derived from SHA-256 of
/// `label`, a NUL and `token`: stable for a token, distinct per label.
pub(crate) fn derived_uuid(token: &str, label: &str) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(label.as_bytes());
    ctx.update(&[0]);
    ctx.update(token.as_bytes());
    let d = ctx.finish();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d.as_ref()[..16]);
    b[6] = (b[6] & 0x0f) | 0x40; // version 4
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    let h: String = b.iter().map(|x| format!("{x:02X}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Writes the bundle under `out`, creating directories as needed.
///
/// `out` may be missing, empty, or hold a previous bundle: files with a
/// bundle path are overwritten. Anything else in it (a file or directory the
/// bundle does not own) makes this fail with `AlreadyExists` before
/// anything is written, so a typo cannot scatter files into, say, a home
/// directory.
pub fn write_dir(bundle: &Bundle, out: &Path) -> Result<(), BundleError> {
    let owned: BTreeSet<&str> = bundle.files.iter().map(|f| f.path.as_str()).collect();
    let owned_dirs: BTreeSet<String> = bundle
        .files
        .iter()
        .filter_map(|f| f.path.rsplit_once('/').map(|(d, _)| d.to_owned()))
        .collect();
    if out.exists() {
        let mut stray = Vec::new();
        find_stray(out, "", &owned, &owned_dirs, &mut stray)?;
        if !stray.is_empty() {
            return Err(BundleError::Io(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!(
                    "{} is not empty and holds files that are not part of a bundle ({}); \
                     choose a new or empty directory",
                    out.display(),
                    stray.join(", ")
                ),
            )));
        }
    }
    for f in &bundle.files {
        let path = out.join(f.path.replace('/', std::path::MAIN_SEPARATOR_STR));
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, &f.contents)?;
    }
    Ok(())
}

fn find_stray(
    dir: &Path,
    prefix: &str,
    owned: &BTreeSet<&str>,
    owned_dirs: &BTreeSet<String>,
    stray: &mut Vec<String>,
) -> Result<(), BundleError> {
    let mut entries = std::fs::read_dir(dir)?.collect::<Result<Vec<_>, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let rel = format!("{prefix}{name}");
        let ty = e.file_type()?;
        if ty.is_dir() && owned_dirs.contains(&rel) {
            find_stray(&e.path(), &format!("{rel}/"), owned, owned_dirs, stray)?;
        } else if !(ty.is_file() && owned.contains(rel.as_str())) {
            stray.push(rel);
        }
    }
    Ok(())
}

/// The bundle as a zip archive (deflate), every entry under `imd-bundle/`.
/// Entry timestamps are the zip epoch (1980-01-01), so equal bundles give
/// equal archives.
pub fn to_zip(bundle: &Bundle) -> Result<Vec<u8>, BundleError> {
    use zip::write::SimpleFileOptions;
    let zip_err = |e: zip::result::ZipError| BundleError::Io(std::io::Error::other(e));
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .unix_permissions(0o644);
    for f in &bundle.files {
        w.start_file(format!("{ZIP_ROOT}{}", f.path), opts)
            .map_err(zip_err)?;
        w.write_all(&f.contents)?;
    }
    Ok(w.finish().map_err(zip_err)?.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_rules() {
        assert!(!check_server("https://imd.example.com").unwrap());
        assert!(!check_server("HTTPS://imd.example.com:8443/x?y=1&z").unwrap());
        assert!(check_server("http://10.0.0.1:8080/").unwrap());
        assert!(!check_server("https://[::1]:8443").unwrap());
        for bad in [
            "",
            "imd.example.com",
            "ftp://imd.example.com",
            "https://",
            "https:///path",
            "https://:443",
            "https://user:pw@imd.example.com",
            "https://imd.example.com/a b",
            "https://imd.example.com/\"x",
            "https://imd.example.com/<x>",
            "https://imd.example.com\\x",
            "https://imd.example.com/\n",
        ] {
            assert!(
                matches!(check_server(bad), Err(BundleError::BadServer(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn vendor_and_file_name_rules() {
        assert!(check_vendor("Imd").is_ok());
        assert!(check_vendor(&"a".repeat(64)).is_ok());
        for bad in ["", "Im d", "Imd-Corp", "Ïmd", "a\\b", &"a".repeat(65)] {
            assert!(check_vendor(bad).is_err(), "{bad:?}");
        }
        assert!(check_file_name("msi", "imd-agent 1.2 (x64).msi").is_ok());
        for bad in [
            "",
            "a/b.msi",
            "a\\b.msi",
            "\"a.msi",
            "it's.msi",
            "%TEMP%.msi",
            "C:a.msi",
            "..",
            "a.msi ",
        ] {
            assert!(check_file_name("msi", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn derived_uuids_are_v4_and_stable() {
        let a = derived_uuid("tok", "profile");
        assert_eq!(a, derived_uuid("tok", "profile"));
        assert_ne!(a, derived_uuid("tok", "payload"));
        assert_ne!(a, derived_uuid("tok2", "profile"));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!("89AB".contains(&a[19..20]));
    }
}
