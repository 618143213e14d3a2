//! The connector channel's wire messages, shared by `imd connector run` (the on-premises side)
//! and the service (`directory/`). One WebSocket, JSON text frames, one message per frame.
//! The protocol version travels in the upgrade request's `x-imd-connector-protocol` header; a
//! mismatch is refused before the upgrade (see docs/connector-protocol.md). Every request names
//! its own id and deadline, so many can be in flight and answers may arrive in any order.

use serde::{Deserialize, Serialize};

/// Bumped on any incompatible change to the messages below.
pub const PROTOCOL_VERSION: u32 = 1;
pub const PROTOCOL_HEADER: &str = "x-imd-connector-protocol";
pub const VERSION_HEADER: &str = "x-imd-connector-version";
pub const CHANNEL_PATH: &str = "/api/v1/connectors/channel";
pub const REGISTER_PATH: &str = "/api/v1/connectors/register";
/// Connector credentials start with this, so a leaked one is recognisable.
pub const CREDENTIAL_PREFIX: &str = "imdc_";

/// `POST /api/v1/connectors/register` body.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RegisterRequest {
    pub registration_key: String,
    pub version: String,
    pub hostname: Option<String>,
}

/// `POST /api/v1/connectors/register` answer: the long-lived credential, shown this once.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RegisterResponse {
    pub connector_id: String,
    pub org_id: String,
    pub name: String,
    pub credential: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DirectoryKind {
    Ad,
    Openldap,
}

impl DirectoryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DirectoryKind::Ad => "ad",
            DirectoryKind::Openldap => "openldap",
        }
    }
}

/// Service → connector.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// First message after the upgrade: the limits this channel runs under.
    Welcome {
        connector_id: String,
        heartbeat_secs: u64,
        max_in_flight: u32,
        max_response_bytes: u64,
    },
    Request {
        id: u64,
        /// Milliseconds the service will wait for the answer from when it sent the request.
        deadline_ms: u64,
        op: Operation,
    },
    /// The service stopped waiting (deadline passed, caller gone): drop the work if possible.
    Cancel {
        id: u64,
    },
    Ping,
    Pong,
}

/// Connector → service.
// Messages live for one send or receive; boxing the large variants would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ConnectorMessage {
    /// First message from the connector after `Welcome`.
    Hello {
        version: String,
        directory_kind: DirectoryKind,
    },
    Response {
        id: u64,
        outcome: Outcome,
    },
    Ping,
    Pong,
}

/// What the service may ask. All read-only: the connector never writes to the directory.
/// `Debug` leaves the password out, so no log line can carry it.
#[derive(Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Operation {
    RootDse,
    /// Organizational units and containers one level below `base` (the configured base DN
    /// when absent).
    ListOus {
        base: Option<String>,
    },
    /// Groups anywhere under `base` whose name starts with `prefix`, one page at a time.
    ListGroups {
        base: Option<String>,
        prefix: Option<String>,
        page_size: u32,
        cursor: Option<String>,
    },
    /// One user by login (`sAMAccountName` / `uid`, with an optional domain that must be the
    /// directory's) or by UPN. `filters` are the mappings' LDAP filters: the answer says which
    /// of them the user matches (`DirUser::matched_filters`, indexes into this list).
    LookupUser {
        login: Option<String>,
        domain: Option<String>,
        upn: Option<String>,
        filters: Vec<String>,
    },
    /// Users under `base` (optionally ANDed with `filter`), one page at a time (directory sync).
    SearchUsers {
        base: Option<String>,
        filter: Option<String>,
        page_size: u32,
        cursor: Option<String>,
    },
    /// Look the user up as `LookupUser` does, then bind as it with `password` on a connection
    /// of its own. The password is never logged or kept.
    VerifyPassword {
        login: Option<String>,
        domain: Option<String>,
        upn: Option<String>,
        password: String,
        filters: Vec<String>,
    },
}

impl std::fmt::Debug for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Operation::VerifyPassword {
                login,
                domain,
                upn,
                filters,
                ..
            } => f
                .debug_struct("VerifyPassword")
                .field("login", login)
                .field("domain", domain)
                .field("upn", upn)
                .field("password", &"<redacted>")
                .field("filters", filters)
                .finish(),
            Operation::RootDse => f.write_str("RootDse"),
            Operation::ListOus { base } => f.debug_struct("ListOus").field("base", base).finish(),
            Operation::ListGroups {
                base,
                prefix,
                page_size,
                cursor,
            } => f
                .debug_struct("ListGroups")
                .field("base", base)
                .field("prefix", prefix)
                .field("page_size", page_size)
                .field("cursor", cursor)
                .finish(),
            Operation::LookupUser {
                login,
                domain,
                upn,
                filters,
            } => f
                .debug_struct("LookupUser")
                .field("login", login)
                .field("domain", domain)
                .field("upn", upn)
                .field("filters", filters)
                .finish(),
            Operation::SearchUsers {
                base,
                filter,
                page_size,
                cursor,
            } => f
                .debug_struct("SearchUsers")
                .field("base", base)
                .field("filter", filter)
                .field("page_size", page_size)
                .field("cursor", cursor)
                .finish(),
        }
    }
}

impl Operation {
    pub fn name(&self) -> &'static str {
        match self {
            Operation::RootDse => "root_dse",
            Operation::ListOus { .. } => "list_ous",
            Operation::ListGroups { .. } => "list_groups",
            Operation::LookupUser { .. } => "lookup_user",
            Operation::SearchUsers { .. } => "search_users",
            Operation::VerifyPassword { .. } => "verify_password",
        }
    }
}

#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    Ok { result: OpResult },
    Err { error: OpError },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OpResult {
    RootDse(RootDse),
    Entries {
        items: Vec<DirEntry>,
        next_cursor: Option<String>,
    },
    /// `None`: no such user (also for a login of another domain).
    User {
        user: Option<DirUser>,
    },
    Users {
        items: Vec<DirUser>,
        next_cursor: Option<String>,
    },
    Password(PasswordCheck),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RootDse {
    pub directory_kind: DirectoryKind,
    pub naming_contexts: Vec<String>,
    pub default_naming_context: Option<String>,
    /// The configured base DN the connector works under.
    pub base_dn: String,
    /// AD: `dnsHostName`; OpenLDAP: the URL answered.
    pub server: String,
    /// AD `currentTime` as RFC 3339, when the directory reports it.
    pub server_time: Option<String>,
    pub supports_paging: bool,
    /// AD NetBIOS domain name (`EXAMPLE`) and DNS root (`example.test`), when found.
    pub netbios_domain: Option<String>,
    pub dns_domain: Option<String>,
    pub vendor: Option<String>,
}

/// An OU, container or group as listed for browsing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DirEntry {
    pub dn: String,
    pub name: String,
    /// `organizationalUnit`, `container`, `group`, `groupOfNames`, ...
    pub class: String,
}

/// A user as the directory reports it, attributes mapped per the connector's configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DirUser {
    /// Immutable id, canonical lower-case UUID string (AD objectGUID read with its mixed byte
    /// order, OpenLDAP entryUUID).
    pub id: String,
    pub dn: String,
    pub login: Option<String>,
    pub upn: Option<String>,
    pub email: Option<String>,
    pub name: Option<String>,
    pub department: Option<String>,
    pub country: Option<String>,
    /// Direct and nested group DNs (transitive membership).
    pub groups: Vec<String>,
    /// AD: userAccountControl 0x2 clear and accountExpires not passed; OpenLDAP: the configured
    /// `enabled` attribute, enabled when none is configured.
    pub enabled: bool,
    /// Indexes into the request's `filters` that this user matches.
    pub matched_filters: Vec<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PasswordVerdict {
    Valid,
    /// Wrong password, or no such user (not told apart, as the directory does not either).
    Invalid,
    Disabled,
    Locked,
    Expired,
    MustChange,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PasswordCheck {
    pub verdict: PasswordVerdict,
    /// The user, on `Valid` (and `Disabled` when known).
    pub user: Option<DirUser>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpErrorCode {
    /// No configured URL answered, or the bind with the service account failed.
    DirectoryUnavailable,
    /// A base DN, filter or argument the directory refused.
    InvalidRequest,
    /// A base DN that does not exist.
    NotFound,
    /// The answer would exceed `max_response_bytes`.
    TooLarge,
    /// The connector is at its own in-flight limit.
    Busy,
    Timeout,
    /// A paging cursor that expired or was never issued.
    CursorExpired,
    Internal,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OpError {
    pub code: OpErrorCode,
    pub message: String,
}

impl OpError {
    pub fn new(code: OpErrorCode, message: impl Into<String>) -> Self {
        OpError {
            code,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_have_the_documented_shape() {
        let m = ServerMessage::Request {
            id: 7,
            deadline_ms: 10_000,
            op: Operation::LookupUser {
                login: Some("alice".into()),
                domain: None,
                upn: None,
                filters: vec!["(department=Sales)".into()],
            },
        };
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["type"], "request");
        assert_eq!(v["op"]["op"], "lookup_user");
        assert_eq!(v["op"]["filters"][0], "(department=Sales)");
        let r = ConnectorMessage::Response {
            id: 7,
            outcome: Outcome::Err {
                error: OpError::new(OpErrorCode::TooLarge, "too big"),
            },
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["outcome"]["status"], "err");
        assert_eq!(v["outcome"]["error"]["code"], "too_large");
        let back: ConnectorMessage = serde_json::from_value(v).unwrap();
        assert!(matches!(back, ConnectorMessage::Response { id: 7, .. }));
    }

    #[test]
    fn debug_output_never_carries_a_password() {
        let m = ServerMessage::Request {
            id: 1,
            deadline_ms: 1,
            op: Operation::VerifyPassword {
                login: Some("alice".into()),
                domain: None,
                upn: None,
                password: "Hunter2!secret".into(),
                filters: vec![],
            },
        };
        let s = format!("{m:?}");
        assert!(!s.contains("Hunter2"), "{s}");
        assert!(s.contains("alice"));
    }
}
