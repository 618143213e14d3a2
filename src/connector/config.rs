//! The connector's configuration: a TOML file (`--config FILE`) overridden by `IMD_CONNECTOR_*`
//! environment variables, validated once at start. Owns the bind secret (redacted `Debug`,
//! password files must be 0600) and the per-kind attribute defaults.
//!
//! ```toml
//! [directory]
//! kind = "ad"                      # "ad" | "openldap"
//! urls = ["ldaps://dc1.corp.example.com:636", "ldap://dc2.corp.example.com:389"]  # tried in order
//! starttls = false                 # upgrade ldap:// URLs with StartTLS
//! ca_file = "/etc/imd/corp-ca.pem" # optional PEM roots; the system roots otherwise
//! bind_dn = "CN=imd-reader,OU=Service,DC=corp,DC=example,DC=com"
//! bind_password_file = "/etc/imd/bind-password"   # mode 0600; or bind_password = "..."
//! base_dn = "DC=corp,DC=example,DC=com"
//! timeout_secs = 10                # per LDAP operation (1..=300)
//! page_size = 500                  # default page for paged searches (1..=1000, AD's cap)
//! pool_size = 4                    # bound service-account connections kept (1..=64)
//! idle_secs = 60                   # an idle pooled connection is closed after this
//! max_group_depth = 10             # OpenLDAP nested-group expansion depth (1..=64)
//! domains = []                     # extra accepted `DOMAIN\user` domains (see below)
//! [directory.attributes]           # optional overrides of the per-kind defaults
//! email = "mail"
//! [server]
//! ca_file = "/etc/imd/imd-ca.pem"  # optional pin of imd's CA (used by the channel)
//! ```
//!
//! Attribute defaults — AD: id=objectGUID login=sAMAccountName upn=userPrincipalName email=mail
//! name=cn department=department country=c groups=memberOf enabled=userAccountControl.
//! OpenLDAP: id=entryUUID login=uid upn=(none: UPN look-ups use `email`) email=mail name=cn
//! department=departmentNumber country=c groups=memberOf enabled=(none). An override of `""`
//! unsets an optional mapping (`upn`, `enabled`).
//!
//! `enabled` semantics: when the mapped attribute is `userAccountControl` the account is
//! enabled iff bit 0x2 is clear (and, on AD, `accountExpires` has not passed). Any other
//! attribute is read as a boolean flag: `FALSE`/`false`/`0`/`no`/`disabled` → disabled, any
//! other value or no value → enabled (e.g. `enabled = "employeeActive"` with TRUE/FALSE). With
//! no mapping (OpenLDAP default) every user is enabled.
//!
//! Domains in `DOMAIN\user` look-ups: AD accepts its own NetBIOS name and DNS root (read from
//! the directory) plus `domains`, case-insensitively; any other domain means "no such user".
//! OpenLDAP has no domain of its own: with `domains` empty a domain is ignored, otherwise it
//! must be one of `domains`.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::connector::proto::DirectoryKind;

/// Every variable the connector reads; any other `IMD_CONNECTOR_*` variable is an error (a
/// typo would otherwise silently fall back to the file's value).
/// (variable suffix after `IMD_CONNECTOR_`, TOML path, value type)
const ENV_KEYS: &[(&str, &[&str], EnvType)] = &[
    ("DIRECTORY_KIND", &["directory", "kind"], EnvType::Str),
    ("DIRECTORY_URLS", &["directory", "urls"], EnvType::List),
    (
        "DIRECTORY_STARTTLS",
        &["directory", "starttls"],
        EnvType::Bool,
    ),
    ("DIRECTORY_CA_FILE", &["directory", "ca_file"], EnvType::Str),
    ("DIRECTORY_BIND_DN", &["directory", "bind_dn"], EnvType::Str),
    (
        "DIRECTORY_BIND_PASSWORD",
        &["directory", "bind_password"],
        EnvType::Str,
    ),
    (
        "DIRECTORY_BIND_PASSWORD_FILE",
        &["directory", "bind_password_file"],
        EnvType::Str,
    ),
    ("DIRECTORY_BASE_DN", &["directory", "base_dn"], EnvType::Str),
    (
        "DIRECTORY_TIMEOUT_SECS",
        &["directory", "timeout_secs"],
        EnvType::Int,
    ),
    (
        "DIRECTORY_PAGE_SIZE",
        &["directory", "page_size"],
        EnvType::Int,
    ),
    (
        "DIRECTORY_POOL_SIZE",
        &["directory", "pool_size"],
        EnvType::Int,
    ),
    (
        "DIRECTORY_IDLE_SECS",
        &["directory", "idle_secs"],
        EnvType::Int,
    ),
    (
        "DIRECTORY_MAX_GROUP_DEPTH",
        &["directory", "max_group_depth"],
        EnvType::Int,
    ),
    (
        "DIRECTORY_DOMAINS",
        &["directory", "domains"],
        EnvType::List,
    ),
    (
        "DIRECTORY_ATTRIBUTES_ID",
        &["directory", "attributes", "id"],
        EnvType::Str,
    ),
    (
        "DIRECTORY_ATTRIBUTES_LOGIN",
        &["directory", "attributes", "login"],
        EnvType::Str,
    ),
    (
        "DIRECTORY_ATTRIBUTES_UPN",
        &["directory", "attributes", "upn"],
        EnvType::Str,
    ),
    (
        "DIRECTORY_ATTRIBUTES_EMAIL",
        &["directory", "attributes", "email"],
        EnvType::Str,
    ),
    (
        "DIRECTORY_ATTRIBUTES_NAME",
        &["directory", "attributes", "name"],
        EnvType::Str,
    ),
    (
        "DIRECTORY_ATTRIBUTES_DEPARTMENT",
        &["directory", "attributes", "department"],
        EnvType::Str,
    ),
    (
        "DIRECTORY_ATTRIBUTES_COUNTRY",
        &["directory", "attributes", "country"],
        EnvType::Str,
    ),
    (
        "DIRECTORY_ATTRIBUTES_GROUPS",
        &["directory", "attributes", "groups"],
        EnvType::Str,
    ),
    (
        "DIRECTORY_ATTRIBUTES_ENABLED",
        &["directory", "attributes", "enabled"],
        EnvType::Str,
    ),
    // TODO(channel): add the `[server]` keys of `imd connector run` here (url, credential file).
    ("SERVER_CA_FILE", &["server", "ca_file"], EnvType::Str),
];

pub const ENV_PREFIX: &str = "IMD_CONNECTOR_";

#[derive(Clone, Copy)]
enum EnvType {
    Str,
    List,
    Bool,
    Int,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Parse(String),
    #[error("invalid value for `{key}`: {message}")]
    Invalid { key: String, message: String },
    #[error(
        "unknown environment variable {0} (known: IMD_CONNECTOR_DIRECTORY_URLS, ..._BIND_DN, ..._BIND_PASSWORD_FILE, ..._BASE_DN, ..._KIND; see docs/connector-directory.md)"
    )]
    UnknownEnv(String),
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message: message.into(),
    }
}

/// A secret string: `Debug` and `Display` never show it.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorConfig {
    pub directory: DirectoryConfig,
    #[serde(default)]
    pub server: ServerConfig,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// PEM file pinning imd's CA for the channel.
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryConfig {
    pub kind: DirectoryKind,
    pub urls: Vec<String>,
    #[serde(default)]
    pub starttls: bool,
    pub ca_file: Option<PathBuf>,
    pub bind_dn: String,
    /// Filled from `bind_password_file` by `load`; never printed.
    pub bind_password: Option<Secret>,
    pub bind_password_file: Option<PathBuf>,
    pub base_dn: String,
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    #[serde(default = "default_idle")]
    pub idle_secs: u64,
    #[serde(default = "default_depth")]
    pub max_group_depth: usize,
    #[serde(default)]
    pub domains: Vec<String>,
    #[serde(default)]
    pub attributes: AttributeOverrides,
}

fn default_timeout() -> u64 {
    10
}
fn default_page_size() -> u32 {
    500
}
fn default_pool_size() -> usize {
    4
}
fn default_idle() -> u64 {
    60
}
fn default_depth() -> usize {
    10
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttributeOverrides {
    pub id: Option<String>,
    pub login: Option<String>,
    pub upn: Option<String>,
    pub email: Option<String>,
    pub name: Option<String>,
    pub department: Option<String>,
    pub country: Option<String>,
    pub groups: Option<String>,
    pub enabled: Option<String>,
}

/// The attribute names the connector reads, after defaults and overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttributeMap {
    pub id: String,
    pub login: String,
    pub upn: Option<String>,
    pub email: String,
    pub name: String,
    pub department: String,
    pub country: String,
    pub groups: String,
    pub enabled: Option<String>,
}

impl DirectoryConfig {
    pub fn bind_password(&self) -> &str {
        self.bind_password
            .as_ref()
            .map(Secret::expose)
            .unwrap_or("")
    }

    pub fn attributes(&self) -> AttributeMap {
        let o = &self.attributes;
        let pick = |v: &Option<String>, d: &str| v.clone().unwrap_or_else(|| d.to_owned());
        let opt = |v: &Option<String>, d: Option<&str>| match v {
            Some(s) if s.is_empty() => None,
            Some(s) => Some(s.clone()),
            None => d.map(str::to_owned),
        };
        match self.kind {
            DirectoryKind::Ad => AttributeMap {
                id: pick(&o.id, "objectGUID"),
                login: pick(&o.login, "sAMAccountName"),
                upn: opt(&o.upn, Some("userPrincipalName")),
                email: pick(&o.email, "mail"),
                name: pick(&o.name, "cn"),
                department: pick(&o.department, "department"),
                country: pick(&o.country, "c"),
                groups: pick(&o.groups, "memberOf"),
                enabled: opt(&o.enabled, Some("userAccountControl")),
            },
            DirectoryKind::Openldap => AttributeMap {
                id: pick(&o.id, "entryUUID"),
                login: pick(&o.login, "uid"),
                upn: opt(&o.upn, None),
                email: pick(&o.email, "mail"),
                name: pick(&o.name, "cn"),
                department: pick(&o.department, "departmentNumber"),
                country: pick(&o.country, "c"),
                groups: pick(&o.groups, "memberOf"),
                enabled: opt(&o.enabled, None),
            },
        }
    }
}

impl ConnectorConfig {
    /// The file (if any), then `IMD_CONNECTOR_*` variables from the process environment.
    pub fn load(path: Option<&Path>) -> Result<ConnectorConfig, ConfigError> {
        let text = match path {
            Some(p) => Some(
                std::fs::read_to_string(p).map_err(|source| ConfigError::Io {
                    path: p.to_owned(),
                    source,
                })?,
            ),
            None => None,
        };
        Self::load_from(text.as_deref(), std::env::vars())
    }

    /// Tests: a TOML string alone, no environment.
    pub fn from_toml_str(toml_text: &str) -> Result<ConnectorConfig, ConfigError> {
        Self::load_from(Some(toml_text), std::iter::empty())
    }

    /// TOML text (optional) overridden by the given variables; reads the password file.
    pub fn load_from(
        toml_text: Option<&str>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<ConnectorConfig, ConfigError> {
        let mut table: toml::Table = match toml_text {
            Some(t) => toml::from_str(t).map_err(|e| ConfigError::Parse(e.to_string()))?,
            None => toml::Table::new(),
        };
        for (name, value) in env {
            let Some(suffix) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let Some((_, path, ty)) = ENV_KEYS.iter().find(|(s, _, _)| *s == suffix) else {
                return Err(ConfigError::UnknownEnv(name));
            };
            let v = env_value(&name, &value, *ty)?;
            set_path(&mut table, path, v);
        }
        let mut cfg: ConnectorConfig = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
        cfg.resolve_password()?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn resolve_password(&mut self) -> Result<(), ConfigError> {
        let d = &mut self.directory;
        match (&d.bind_password, &d.bind_password_file) {
            (Some(_), Some(_)) => Err(invalid(
                "directory.bind_password",
                "set either bind_password or bind_password_file, not both",
            )),
            (None, None) => Err(invalid(
                "directory.bind_password_file",
                "a bind password is required (bind_password_file or bind_password)",
            )),
            (Some(_), None) => Ok(()),
            (None, Some(path)) => {
                let pw = read_secret_file(path)
                    .map_err(|m| invalid("directory.bind_password_file", m))?;
                d.bind_password = Some(Secret(pw));
                Ok(())
            }
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let d = &self.directory;
        if d.urls.is_empty() {
            return Err(invalid("directory.urls", "at least one URL is required"));
        }
        for u in &d.urls {
            let lower = u.to_ascii_lowercase();
            if !(lower.starts_with("ldap://") || lower.starts_with("ldaps://")) {
                return Err(invalid(
                    "directory.urls",
                    format!("{u:?} must start with ldap:// or ldaps://"),
                ));
            }
            let host = lower.split("://").nth(1).unwrap_or("");
            if host.is_empty() || host.starts_with('/') || host.starts_with(':') {
                return Err(invalid("directory.urls", format!("{u:?} has no host")));
            }
        }
        if d.bind_dn.trim().is_empty() {
            return Err(invalid("directory.bind_dn", "must not be empty"));
        }
        // An empty password turns a simple bind into an anonymous one (RFC 4513 §5.1.2).
        if d.bind_password().is_empty() {
            return Err(invalid(
                "directory.bind_password",
                "must not be empty (an empty password is an anonymous bind)",
            ));
        }
        if d.base_dn.trim().is_empty() {
            return Err(invalid("directory.base_dn", "must not be empty"));
        }
        if !(1..=300).contains(&d.timeout_secs) {
            return Err(invalid("directory.timeout_secs", "must be 1..=300"));
        }
        if !(1..=1000).contains(&d.page_size) {
            return Err(invalid("directory.page_size", "must be 1..=1000"));
        }
        if !(1..=64).contains(&d.pool_size) {
            return Err(invalid("directory.pool_size", "must be 1..=64"));
        }
        if !(1..=86_400).contains(&d.idle_secs) {
            return Err(invalid("directory.idle_secs", "must be 1..=86400"));
        }
        if !(1..=64).contains(&d.max_group_depth) {
            return Err(invalid("directory.max_group_depth", "must be 1..=64"));
        }
        let a = &self.directory.attributes;
        for (key, v) in [
            ("id", &a.id),
            ("login", &a.login),
            ("email", &a.email),
            ("name", &a.name),
            ("department", &a.department),
            ("country", &a.country),
            ("groups", &a.groups),
        ] {
            if let Some(v) = v
                && !is_attr_name(v)
            {
                return Err(invalid(
                    &format!("directory.attributes.{key}"),
                    format!("{v:?} is not an attribute name"),
                ));
            }
        }
        for (key, v) in [("upn", &a.upn), ("enabled", &a.enabled)] {
            if let Some(v) = v
                && !v.is_empty()
                && !is_attr_name(v)
            {
                return Err(invalid(
                    &format!("directory.attributes.{key}"),
                    format!("{v:?} is not an attribute name"),
                ));
            }
        }
        Ok(())
    }
}

/// Attribute descriptions are put into requests verbatim: letters, digits and `-` only.
fn is_attr_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// Reads a secret file: refused unless only the owner can read it; one trailing newline cut.
fn read_secret_file(path: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "{} has mode {mode:03o}; it must not be readable by group or others (chmod 600)",
                path.display()
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    let mut s = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if s.ends_with('\n') {
        s.pop();
        if s.ends_with('\r') {
            s.pop();
        }
    }
    Ok(s)
}

fn env_value(name: &str, value: &str, ty: EnvType) -> Result<toml::Value, ConfigError> {
    Ok(match ty {
        EnvType::Str => toml::Value::String(value.to_owned()),
        EnvType::List => toml::Value::Array(
            value
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_owned()))
                .collect(),
        ),
        EnvType::Bool => match value.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" => toml::Value::Boolean(true),
            "0" | "false" | "no" => toml::Value::Boolean(false),
            _ => return Err(invalid(name, "expected true or false")),
        },
        EnvType::Int => toml::Value::Integer(
            value
                .trim()
                .parse()
                .map_err(|_| invalid(name, "expected an integer"))?,
        ),
    })
}

fn set_path(table: &mut toml::Table, path: &[&str], v: toml::Value) {
    let (last, parents) = path.split_last().expect("non-empty path");
    let mut t = table;
    for p in parents {
        let entry = t
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        t = entry.as_table_mut().expect("table");
    }
    t.insert(last.to_string(), v);
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[directory]
kind = "ad"
urls = ["ldaps://dc1.corp.example.com:636", "ldap://dc2.corp.example.com:389"]
bind_dn = "CN=imd-reader,OU=Service,DC=corp,DC=example,DC=com"
bind_password = "s3cret-value"
base_dn = "DC=corp,DC=example,DC=com"
"#;

    #[test]
    fn defaults_and_attribute_map() {
        let c = ConnectorConfig::from_toml_str(BASE).unwrap();
        assert_eq!(c.directory.timeout_secs, 10);
        assert_eq!(c.directory.page_size, 500);
        assert_eq!(c.directory.pool_size, 4);
        let a = c.directory.attributes();
        assert_eq!(a.id, "objectGUID");
        assert_eq!(a.enabled.as_deref(), Some("userAccountControl"));
        assert!(c.server.ca_file.is_none());
    }

    #[test]
    fn password_is_redacted_in_debug() {
        let c = ConnectorConfig::from_toml_str(BASE).unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("s3cret-value"), "{dbg}");
        assert!(dbg.contains("redacted"));
        assert_eq!(c.directory.bind_password(), "s3cret-value");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let t = format!("{BASE}\nbogus = 1\n");
        let e = ConnectorConfig::from_toml_str(&t).unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
        let t = format!("{BASE}\n[directory.attributes]\nmial = \"x\"\n");
        let e = ConnectorConfig::from_toml_str(&t).unwrap_err().to_string();
        assert!(e.contains("mial"), "{e}");
    }

    #[test]
    fn validation_names_the_key() {
        let t = BASE.replace("ldaps://dc1.corp.example.com:636", "http://dc1");
        let e = ConnectorConfig::from_toml_str(&t).unwrap_err().to_string();
        assert!(e.contains("directory.urls"), "{e}");
        let t = format!("{BASE}page_size = 5000\n");
        let e = ConnectorConfig::from_toml_str(&t).unwrap_err().to_string();
        assert!(e.contains("directory.page_size"), "{e}");
        let t = BASE.replace("s3cret-value", "");
        let e = ConnectorConfig::from_toml_str(&t).unwrap_err().to_string();
        assert!(e.contains("bind_password"), "{e}");
        let t = BASE.replace("base_dn = \"DC=corp,DC=example,DC=com\"", "base_dn = \" \"");
        let e = ConnectorConfig::from_toml_str(&t).unwrap_err().to_string();
        assert!(e.contains("directory.base_dn"), "{e}");
        let t = BASE.replace("urls = [", "urls = [] #");
        let e = ConnectorConfig::from_toml_str(&t).unwrap_err().to_string();
        assert!(e.contains("directory.urls"), "{e}");
        let t = format!("{BASE}[directory.attributes]\nemail = \"mail)(x\"\n");
        let e = ConnectorConfig::from_toml_str(&t).unwrap_err().to_string();
        assert!(e.contains("directory.attributes.email"), "{e}");
    }

    #[test]
    fn env_overrides_and_unknown_env() {
        let env = vec![
            (
                "IMD_CONNECTOR_DIRECTORY_URLS".to_owned(),
                "ldap://a:389, ldaps://b:636".to_owned(),
            ),
            (
                "IMD_CONNECTOR_DIRECTORY_KIND".to_owned(),
                "openldap".to_owned(),
            ),
            (
                "IMD_CONNECTOR_DIRECTORY_PAGE_SIZE".to_owned(),
                "200".to_owned(),
            ),
            (
                "IMD_CONNECTOR_DIRECTORY_STARTTLS".to_owned(),
                "true".to_owned(),
            ),
            ("OTHER_VAR".to_owned(), "ignored".to_owned()),
        ];
        let c = ConnectorConfig::load_from(Some(BASE), env).unwrap();
        assert_eq!(c.directory.urls, vec!["ldap://a:389", "ldaps://b:636"]);
        assert_eq!(c.directory.kind, DirectoryKind::Openldap);
        assert_eq!(c.directory.page_size, 200);
        assert!(c.directory.starttls);
        assert_eq!(c.directory.attributes().id, "entryUUID");
        assert_eq!(c.directory.attributes().upn, None);

        let env = vec![("IMD_CONNECTOR_DIRECTORY_URL".to_owned(), "x".to_owned())];
        let e = ConnectorConfig::load_from(Some(BASE), env).unwrap_err();
        assert!(
            matches!(&e, ConfigError::UnknownEnv(n) if n == "IMD_CONNECTOR_DIRECTORY_URL"),
            "{e}"
        );
        let env = vec![(
            "IMD_CONNECTOR_DIRECTORY_PAGE_SIZE".to_owned(),
            "lots".to_owned(),
        )];
        let e = ConnectorConfig::load_from(Some(BASE), env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("IMD_CONNECTOR_DIRECTORY_PAGE_SIZE"), "{e}");
    }

    #[test]
    fn env_only_configuration() {
        let env = [
            ("DIRECTORY_KIND", "openldap"),
            ("DIRECTORY_URLS", "ldap://127.0.0.1:3389"),
            ("DIRECTORY_BIND_DN", "cn=r,dc=x"),
            ("DIRECTORY_BIND_PASSWORD", "pw"),
            ("DIRECTORY_BASE_DN", "dc=x"),
            ("SERVER_CA_FILE", "/etc/imd/ca.pem"),
        ]
        .map(|(k, v)| (format!("{ENV_PREFIX}{k}"), v.to_owned()));
        let c = ConnectorConfig::load_from(None, env).unwrap();
        assert_eq!(c.directory.base_dn, "dc=x");
        assert_eq!(
            c.server.ca_file.as_deref(),
            Some(Path::new("/etc/imd/ca.pem"))
        );
    }

    #[cfg(unix)]
    #[test]
    fn password_file_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "from-file\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let t = BASE.replace(
            "bind_password = \"s3cret-value\"",
            &format!("bind_password_file = {:?}", p.to_str().unwrap()),
        );
        let e = ConnectorConfig::from_toml_str(&t).unwrap_err().to_string();
        assert!(e.contains("bind_password_file") && e.contains("644"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = ConnectorConfig::from_toml_str(&t).unwrap();
        assert_eq!(c.directory.bind_password(), "from-file");
        // both set is ambiguous
        let both = format!("{t}bind_password = \"x\"\n");
        assert!(ConnectorConfig::from_toml_str(&both).is_err());
    }

    #[test]
    fn empty_override_unsets_optional_mapping() {
        let t = format!("{BASE}[directory.attributes]\nupn = \"\"\nenabled = \"\"\n");
        let a = ConnectorConfig::from_toml_str(&t)
            .unwrap()
            .directory
            .attributes();
        assert_eq!(a.upn, None);
        assert_eq!(a.enabled, None);
    }
}
