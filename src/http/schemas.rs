//! Schemas for the API description (docs/api.md, `GET /api/v1/openapi.json`) of answers that
//! handlers build with `json!` rather than from a serialized type. Each is a marker type with a
//! hand-written `JsonSchema`; where the answer is a store row with a few keys added or removed,
//! the schema is derived from the row's own so the two cannot drift apart. The integration tests
//! validate real answers against them (tests/api/openapi.rs).

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde_json::{Value, json};

use crate::store::{AdminKeyRow, TokenRow};

/// Defines a marker type whose schema is the given JSON (an object schema, usually with only the
/// documented keys and no `required` list where the shape varies).
macro_rules! described {
    ($(#[$doc:meta])* $name:ident, $schema:tt) => {
        $(#[$doc])*
        pub struct $name;

        impl JsonSchema for $name {
            fn schema_name() -> Cow<'static, str> {
                stringify!($name).into()
            }

            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!($schema)
            }
        }
    };
}

/// `schema` with `drop` removed from its properties and `add` (name, schema, required) added.
fn amend(mut schema: Schema, drop: &[&str], add: &[(&str, Value, bool)]) -> Schema {
    let obj = schema.ensure_object();
    if let Some(Value::Object(props)) = obj.get_mut("properties") {
        for d in drop {
            props.remove(*d);
        }
        for (name, s, _) in add {
            props.insert((*name).to_string(), s.clone());
        }
    }
    let mut required: Vec<Value> = obj
        .get("required")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| !drop.iter().any(|d| r == d))
        .collect();
    required.extend(
        add.iter()
            .filter(|(_, _, req)| *req)
            .map(|(n, _, _)| json!(n)),
    );
    obj.insert("required".into(), Value::Array(required));
    schema
}

fn token_view_schema(g: &mut SchemaGenerator, extra: &[(&str, Value, bool)]) -> Schema {
    let mut add = vec![
        (
            "days_to_expiry",
            json!({"type": ["integer", "null"], "description": "Whole days left; null without expiry."}),
            true,
        ),
        ("expired", json!({"type": "boolean"}), true),
    ];
    add.extend(extra.iter().cloned());
    amend(TokenRow::json_schema(g), &["org_id"], &add)
}

/// A token as the admin API shows it: its row without `org_id`, with `days_to_expiry` and
/// `expired` (never the token string).
pub struct TokenView;

impl JsonSchema for TokenView {
    fn schema_name() -> Cow<'static, str> {
        "TokenView".into()
    }

    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        token_view_schema(g, &[])
    }
}

/// A freshly minted token: the view plus the token string, shown only here.
pub struct MintedToken;

impl JsonSchema for MintedToken {
    fn schema_name() -> Cow<'static, str> {
        "MintedToken".into()
    }

    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        token_view_schema(
            g,
            &[(
                "token",
                json!({"type": "string", "description": "The signed token; shown only once."}),
                true,
            )],
        )
    }
}

/// A rotation's successor: the minted token plus `previous`, the old token's view.
pub struct RotatedToken;

impl JsonSchema for RotatedToken {
    fn schema_name() -> Cow<'static, str> {
        "RotatedToken".into()
    }

    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        let previous = g.subschema_for::<TokenView>().to_value();
        token_view_schema(
            g,
            &[
                ("token", json!({"type": "string"}), true),
                ("previous", previous, true),
            ],
        )
    }
}

/// A new admin key: its row plus the key, shown only here.
pub struct CreatedAdminKey;

impl JsonSchema for CreatedAdminKey {
    fn schema_name() -> Cow<'static, str> {
        "CreatedAdminKey".into()
    }

    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        amend(
            AdminKeyRow::json_schema(g),
            &[],
            &[(
                "key",
                json!({"type": "string", "description": "imd_adm_…; shown only once."}),
                true,
            )],
        )
    }
}

/// `{"items": [...], "next_cursor": null}` for the short lists that are not paginated.
pub struct List<T>(std::marker::PhantomData<T>);

impl<T: JsonSchema> JsonSchema for List<T> {
    fn schema_name() -> Cow<'static, str> {
        format!("{}List", T::schema_name()).into()
    }

    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        let item = g.subschema_for::<T>().to_value();
        json_schema!({
            "type": "object",
            "required": ["items"],
            "properties": {
                "items": {"type": "array", "items": item},
                "next_cursor": {"type": ["string", "null"], "description": "A page cursor (null when the list is complete)."}
            }
        })
    }
}

/// The error body every failure carries (`src/http/error.rs`).
pub struct ErrorBody;

impl JsonSchema for ErrorBody {
    fn schema_name() -> Cow<'static, str> {
        "Error".into()
    }

    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        let code = g.subschema_for::<ErrorCode>().to_value();
        json_schema!({
            "type": "object",
            "required": ["error"],
            "additionalProperties": false,
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message", "retryable"],
                    "description": "Some errors add keys (the device-map errors add `errors`, `rows_total`, ...; mapping conflicts add `field` and `conflicting_mapping_id`).",
                    "properties": {
                        "code": code,
                        "message": {"type": "string", "description": "For humans; a 5xx never carries internal text."},
                        "retryable": {"type": "boolean", "description": "Whether the same request may succeed later without change."},
                        "request_id": {"type": "string", "description": "Also in the X-Request-Id header and on the server's log lines."}
                    }
                }
            }
        })
    }
}

/// Every stable error code, with its HTTP status and whether it is retryable.
pub struct ErrorCode;

impl JsonSchema for ErrorCode {
    fn schema_name() -> Cow<'static, str> {
        "ErrorCode".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let codes: Vec<&str> = super::Code::ALL.iter().map(|c| c.as_str()).collect();
        let table: serde_json::Map<String, Value> = super::Code::ALL
            .iter()
            .map(|c| {
                (
                    c.as_str().to_string(),
                    json!({"status": c.status().as_u16(), "retryable": c.retryable()}),
                )
            })
            .collect();
        json_schema!({
            "type": "string",
            "enum": codes,
            "x-codes": table
        })
    }
}

described!(
    /// `GET /healthz`.
    Health,
    {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}}
);

described!(
    /// `GET /readyz`.
    Ready,
    {
        "type": "object",
        "required": ["status", "backend", "audit_dropped"],
        "properties": {
            "status": {"const": "ready"},
            "backend": {"enum": ["sqlite", "postgres"]},
            "audit_dropped": {"type": "integer", "minimum": 0, "description": "Audit records dropped since start (the audit queue was full)."}
        }
    }
);

described!(
    /// The JSON Web Key Set of the token-signing keys (RFC 7517).
    Jwks,
    {
        "type": "object",
        "required": ["keys"],
        "properties": {
            "keys": {"type": "array", "items": {
                "type": "object",
                "required": ["kty", "kid"],
                "properties": {"kty": {"type": "string"}, "kid": {"type": "string"}, "alg": {"type": "string"}, "use": {"type": "string"}}
            }}
        }
    }
);

/// `GET /api/v1/device`: the calling device and its user.
pub struct DeviceWithUser;

impl JsonSchema for DeviceWithUser {
    fn schema_name() -> Cow<'static, str> {
        "DeviceWithUser".into()
    }

    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        let device = g.subschema_for::<crate::store::DeviceRow>().to_value();
        let user = g.subschema_for::<crate::store::UserRow>().to_value();
        json_schema!({
            "type": "object",
            "required": ["device", "user"],
            "properties": {"device": device, "user": user}
        })
    }
}

/// One stored mapping, or `{"items": [...]}` when several were sent.
pub struct DeviceMappingsCreated;

impl JsonSchema for DeviceMappingsCreated {
    fn schema_name() -> Cow<'static, str> {
        "DeviceMappingsCreated".into()
    }

    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        let one = g.subschema_for::<crate::store::StoredMapping>().to_value();
        json_schema!({
            "anyOf": [
                one,
                {"type": "object", "required": ["items"], "properties": {"items": {"type": "array", "items": one}}}
            ]
        })
    }
}

described!(
    /// One device mapping (`emailID`, `userName`, `deviceName`, `deviceIdentifierType`,
    /// `deviceIdentifier`, optional `oldDeviceName`, `restoreData`), or an array of them, or
    /// `{"mappings": [...]}`; items are validated one by one and reported per item (422).
    DeviceMappingsInput,
    {"anyOf": [{"type": "object"}, {"type": "array", "items": {"type": "object"}}]}
);

described!(
    /// An Azure AD app registration (the secret is never returned).
    AzureConfigView,
    {
        "type": "object",
        "additionalProperties": false,
        "required": ["tenant_id", "client_id", "client_secret_set", "authority_url", "graph_url", "allow_guests", "created_at", "updated_at"],
        "properties": {
            "tenant_id": {"type": "string"}, "client_id": {"type": "string"},
            "client_secret_set": {"const": true, "description": "A secret is always stored; it is never returned."},
            "authority_url": {"type": "string"}, "graph_url": {"type": "string"},
            "allow_guests": {"type": "boolean"},
            "created_at": {"type": "string", "format": "date-time"}, "updated_at": {"type": "string", "format": "date-time"}
        }
    }
);

described!(
    /// The result of an Azure AD connection test: `ok: true` with a sample user and group (null
    /// when the tenant has none), or `ok: false` with what went wrong.
    AzureTestResult,
    {
        "anyOf": [
            {
                "type": "object",
                "additionalProperties": false,
                "required": ["ok", "token", "user_sample", "group_sample"],
                "properties": {
                    "ok": {"const": true},
                    "token": {"const": "ok"},
                    "user_sample": {"anyOf": [{"type": "null"}, {
                        "type": "object", "additionalProperties": false,
                        "required": ["id", "user_principal_name", "display_name"],
                        "properties": {"id": {"type": "string"}, "user_principal_name": {"type": ["string", "null"]}, "display_name": {"type": ["string", "null"]}}
                    }]},
                    "group_sample": {"anyOf": [{"type": "null"}, {
                        "type": "object", "additionalProperties": false,
                        "required": ["id", "display_name", "kind"],
                        "properties": {"id": {"type": "string"}, "display_name": {"type": ["string", "null"]}, "kind": {"type": "string"}}
                    }]}
                }
            },
            {
                "type": "object",
                "additionalProperties": false,
                "required": ["ok", "token", "problem", "message"],
                "description": "The stored secret cannot be unsealed (the master key changed?).",
                "properties": {
                    "ok": {"const": false}, "token": {"const": "failed"},
                    "problem": {"const": "secret_unreadable"}, "message": {"type": "string"}
                }
            },
            {
                "type": "object",
                "additionalProperties": false,
                "required": ["ok", "token", "problem", "code", "permission", "message", "retryable"],
                "description": "Azure AD or Graph refused or failed; `code` is theirs, `permission` the Graph permission to grant (if that is the problem).",
                "properties": {
                    "ok": {"const": false},
                    "token": {"enum": ["ok", "failed", "unknown"], "description": "Whether a token was issued."},
                    "problem": {"type": "string"}, "code": {"type": "string"},
                    "permission": {"type": ["string", "null"]}, "message": {"type": "string"},
                    "retryable": {"type": "boolean"}
                }
            }
        ]
    }
);

described!(
    /// An Azure AD mapping (docs/azure-mappings.md): users of a group, or with an attribute's
    /// value, get the profile, storage region and quota.
    AzureMappingView,
    {
        "type": "object",
        "additionalProperties": false,
        "required": ["id", "name", "priority", "source", "profile", "storage_region", "quota_bytes", "auto_import", "created_at", "updated_at"],
        "properties": {
            "id": {"type": "string"}, "name": {"type": "string"}, "priority": {"type": "integer"},
            "source": {"anyOf": [
                {"type": "object", "additionalProperties": false, "required": ["group_id"], "properties": {"group_id": {"type": ["string", "null"]}}},
                {"type": "object", "additionalProperties": false, "required": ["attribute", "value"], "properties": {"attribute": {"type": ["string", "null"]}, "value": {"type": ["string", "null"]}}}
            ]},
            "profile": {"type": "string"}, "storage_region": {"type": "string"},
            "quota_bytes": {"type": ["integer", "null"], "description": "Null: unlimited."},
            "auto_import": {"type": "boolean"},
            "created_at": {"type": "string", "format": "date-time"}, "updated_at": {"type": "string", "format": "date-time"}
        }
    }
);

described!(
    /// Directory entries found through a connector (`dn`, `name`, `class`).
    DirectoryEntries,
    {
        "type": "object",
        "additionalProperties": false,
        "required": ["items"],
        "properties": {
            "items": {"type": "array", "items": {
                "type": "object", "additionalProperties": false, "required": ["dn", "name", "class"],
                "properties": {"dn": {"type": "string"}, "name": {"type": "string"},
                               "class": {"type": "string", "description": "organizationalUnit, container, group, groupOfNames, …"}}}},
            "next_cursor": {"type": ["string", "null"], "description": "Groups only: `<connector id>.<cursor>` of the next page."}
        }
    }
);

described!(
    /// The directory's root DSE, through a connector.
    NamingContexts,
    {
        "type": "object",
        "additionalProperties": false,
        "required": ["connector_id", "root_dse"],
        "properties": {
            "connector_id": {"type": "string"},
            "root_dse": {
                "type": "object",
                "additionalProperties": false,
                "required": ["directory_kind", "naming_contexts", "default_naming_context", "base_dn", "server",
                             "server_time", "supports_paging", "netbios_domain", "dns_domain", "vendor"],
                "properties": {
                    "directory_kind": {"enum": ["ad", "openldap"]},
                    "naming_contexts": {"type": "array", "items": {"type": "string"}},
                    "default_naming_context": {"type": ["string", "null"]},
                    "base_dn": {"type": "string"},
                    "server": {"type": "string"},
                    "server_time": {"type": ["string", "null"]},
                    "supports_paging": {"type": "boolean"},
                    "netbios_domain": {"type": ["string", "null"]},
                    "dns_domain": {"type": ["string", "null"]},
                    "vendor": {"type": ["string", "null"]}
                }
            }
        }
    }
);

described!(
    /// A directory user checked by password (`POST /api/v1/auth/ldap`).
    LdapLogin,
    {"type": "object", "required": ["user"], "properties": {"user": {"type": "object"}, "imd_user_id": {"type": ["string", "null"]}}}
);

described!(
    /// A call forwarded between replicas, and its answer.
    ForwardedCall,
    {"type": "object", "properties": {"org_id": {"type": "string"}, "connector_id": {"type": "string"}, "deadline_ms": {"type": "integer"}, "op": {"type": "object"}}}
);

described!(
    /// `{"result": "answered", "outcome": …}`, `{"result": "dropped"}` or `{"result": "timeout"}`.
    ForwardedResult,
    {"type": "object", "required": ["result"], "properties": {"result": {"enum": ["answered", "dropped", "timeout"]}}}
);

described!(
    /// Sync settings (docs/sync.md); a `PUT` sends the keys to change.
    SyncSettings,
    {
        "type": "object",
        "additionalProperties": false,
        "required": ["auto_sync_interval_hours", "auto_update_user_details", "auto_preserve_unmapped_users", "mass_change_threshold_percent", "mass_change_threshold_min", "updated_at", "last_run_at", "next_run_at"],
        "properties": {
            "auto_sync_interval_hours": {"type": "integer", "minimum": 1, "maximum": 8760},
            "auto_update_user_details": {"type": "boolean"},
            "auto_preserve_unmapped_users": {"type": "boolean"},
            "mass_change_threshold_percent": {"type": "integer", "minimum": 0, "maximum": 100},
            "mass_change_threshold_min": {"type": "integer", "minimum": 0, "maximum": 1000000},
            "updated_at": {"type": ["string", "null"], "format": "date-time", "description": "Null while the defaults apply."},
            "last_run_at": {"type": ["string", "null"], "format": "date-time"}, "next_run_at": {"type": ["string", "null"], "format": "date-time"}
        }
    }
);

described!(
    /// A profile's retention policy (docs/sync.md).
    Profile,
    {
        "type": "object",
        "additionalProperties": false,
        "required": ["name", "auto_delete_preserved", "delete_after_days", "configured", "users"],
        "properties": {
            "name": {"type": "string"},
            "auto_delete_preserved": {"type": "boolean"},
            "delete_after_days": {"type": "integer", "minimum": 1, "maximum": 366},
            "configured": {"type": "boolean", "description": "False: the defaults apply."},
            "users": {"type": "integer", "minimum": 0, "description": "Users with this profile."}
        }
    }
);

described!(
    /// A JSON object of the fields to set (docs/sync.md names them; unknown keys are 422).
    SettingsInput,
    {"type": "object"}
);

described!(
    /// A sync run (docs/sync.md).
    SyncRun,
    {
        "type": "object",
        "additionalProperties": false,
        "required": ["id", "trigger", "dry_run", "as_of", "status", "started_at", "ended_at", "replica_id", "counts", "held", "sources", "error"],
        "properties": {
            "id": {"type": "string"}, "trigger": {"type": "string"}, "dry_run": {"type": "boolean"},
            "as_of": {"type": ["string", "null"], "format": "date-time"}, "status": {"type": "string"},
            "started_at": {"type": "string", "format": "date-time"}, "ended_at": {"type": ["string", "null"], "format": "date-time"},
            "replica_id": {"type": "string"},
            "counts": {
                "type": "object", "additionalProperties": false,
                "required": ["seen", "imported", "updated", "preserved", "reenabled", "deleted", "skipped", "errors"],
                "properties": {
                    "seen": {"type": "integer"}, "imported": {"type": "integer"}, "updated": {"type": "integer"},
                    "preserved": {"type": "integer"}, "reenabled": {"type": "integer"}, "deleted": {"type": "integer"},
                    "skipped": {"type": "integer"}, "errors": {"type": "integer"}
                }
            },
            "held": {
                "type": "object", "additionalProperties": false, "required": ["preserve", "delete"],
                "properties": {"preserve": {"type": "integer"}, "delete": {"type": "integer"}}
            },
            "sources": {"type": "array", "items": {
                "type": "object", "additionalProperties": false,
                "required": ["source", "mode", "load_ms", "elapsed_ms"],
                "properties": {
                    "source": {"type": "string"}, "mode": {"enum": ["full", "delta"]},
                    "reason": {"type": "string"}, "error": {"type": "string"},
                    "load_ms": {"type": "integer", "minimum": 0}, "elapsed_ms": {"type": "integer", "minimum": 0}
                }
            }},
            "error": {"type": ["string", "null"]}
        }
    }
);

described!(
    /// A sync run just started (`POST /api/v1/admin/sync`); follow it with `GET /api/v1/admin/sync-runs/{id}`.
    SyncStarted,
    {
        "type": "object",
        "additionalProperties": false,
        "required": ["id", "status", "dry_run"],
        "properties": {"id": {"type": "string"}, "status": {"const": "running"}, "dry_run": {"type": "boolean"}}
    }
);

described!(
    /// A page of a sync run's per-user report.
    SyncRunUserPage,
    {
        "type": "object",
        "additionalProperties": false,
        "required": ["items", "next_cursor"],
        "properties": {
            "items": {"type": "array", "items": {
                "type": "object", "additionalProperties": false,
                "required": ["action", "user_id", "external_id", "source", "email", "name", "reason", "applied"],
                "properties": {
                    "action": {"enum": ["imported", "updated", "preserved", "reenabled", "deleted", "skipped", "error"]},
                    "user_id": {"type": ["string", "null"]}, "external_id": {"type": ["string", "null"]},
                    "source": {"type": "string"}, "email": {"type": ["string", "null"]},
                    "name": {"type": ["string", "null"]}, "reason": {"type": ["string", "null"]},
                    "applied": {"type": "boolean"}
                }
            }},
            "next_cursor": {"type": ["string", "null"]}
        }
    }
);

described!(
    /// Items of a paginated list of loosely described objects (see docs/api.md).
    ObjectPage,
    {"type": "object", "required": ["items"], "properties": {"items": {"type": "array", "items": {"type": "object"}}, "next_cursor": {"type": ["string", "null"]}}}
);
