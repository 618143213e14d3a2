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

described!(
    /// A connector as the admin API lists it (docs/connector.md).
    ConnectorView,
    {
        "type": "object",
        "required": ["id", "name"],
        "properties": {
            "id": {"type": "string"}, "name": {"type": "string"},
            "status": {"type": "string"}, "created_at": {"type": "string", "format": "date-time"}
        }
    }
);

described!(
    /// A connector registration key, shown once.
    ConnectorKey,
    {
        "type": "object",
        "required": ["id", "name", "registration_key", "registration_key_expires_at"],
        "properties": {
            "id": {"type": "string"}, "name": {"type": "string"},
            "registration_key": {"type": "string", "description": "imdr_…; shown only once."},
            "registration_key_expires_at": {"type": "string", "format": "date-time"}
        }
    }
);

described!(
    /// A device-map upload report (docs/csv-format.md).
    DeviceMapReport,
    {
        "type": "object",
        "properties": {
            "rows_total": {"type": "integer"}, "rows_valid": {"type": "integer"},
            "rows_invalid": {"type": "integer"}, "applied": {"type": "boolean"},
            "created": {"type": "integer"}, "updated": {"type": "integer"},
            "dry_run": {"type": "boolean"}, "errors": {"type": "array"},
            "errors_truncated": {"type": "boolean"}
        }
    }
);

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
        "properties": {
            "tenant_id": {"type": "string"}, "client_id": {"type": "string"},
            "client_secret_set": {"type": "boolean"}, "authority_url": {"type": "string"},
            "graph_url": {"type": "string"}, "allow_guests": {"type": "boolean"},
            "created_at": {"type": "string", "format": "date-time"},
            "updated_at": {"type": "string", "format": "date-time"}
        }
    }
);

described!(
    /// The result of an Azure AD connection test.
    AzureTestResult,
    {"type": "object", "required": ["ok"], "properties": {"ok": {"type": "boolean"}}}
);

described!(
    /// An Azure AD mapping (docs/azure-mappings.md).
    AzureMappingView,
    {"type": "object", "required": ["id", "name", "priority"], "properties": {"id": {"type": "string"}, "name": {"type": "string"}, "priority": {"type": "integer"}}}
);

described!(
    /// Directory entries found through a connector (`dn`, `name`, `class`).
    DirectoryEntries,
    {
        "type": "object",
        "required": ["items"],
        "properties": {
            "items": {"type": "array", "items": {"type": "object", "properties": {"dn": {"type": "string"}, "name": {"type": "string"}, "class": {"type": "string"}}}},
            "next_cursor": {"type": ["string", "null"]}
        }
    }
);

described!(
    /// The directory's root DSE, through a connector.
    NamingContexts,
    {"type": "object", "required": ["connector_id", "root_dse"], "properties": {"connector_id": {"type": "string"}, "root_dse": {"type": "object"}}}
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
    {"type": "object", "properties": {"last_run_at": {"type": ["string", "null"], "format": "date-time"}, "next_run_at": {"type": ["string", "null"], "format": "date-time"}}}
);

described!(
    /// A profile's retention policy (docs/sync.md).
    Profile,
    {"type": "object"}
);

described!(
    /// A JSON object of the fields to set (docs/sync.md names them; unknown keys are 422).
    SettingsInput,
    {"type": "object"}
);

described!(
    /// A sync run (docs/sync.md).
    SyncRun,
    {"type": "object", "required": ["id", "status"], "properties": {"id": {"type": "string"}, "status": {"type": "string"}, "dry_run": {"type": "boolean"}}}
);

described!(
    /// Items of a paginated list of loosely described objects (see docs/api.md).
    ObjectPage,
    {"type": "object", "required": ["items"], "properties": {"items": {"type": "array", "items": {"type": "object"}}, "next_cursor": {"type": ["string", "null"]}}}
);

described!(
    /// `GET /api/v1/admin/overview` (the console's first page).
    Overview,
    {
        "type": "object",
        "required": ["window", "generated_at"],
        "properties": {
            "window": {"enum": ["24h", "30d"]},
            "generated_at": {"type": "string", "format": "date-time"},
            "rollout": {"type": "object"},
            "activity": {"type": "object"}
        }
    }
);
