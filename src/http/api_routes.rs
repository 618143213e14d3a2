//! The route table: every HTTP operation of the API, once, with its handler and its
//! documentation. `routes()` (mod.rs) registers the actix resources from this table only, and
//! the OpenAPI description (`openapi.rs`) is built from the same entries, so a route cannot be
//! served without being described, nor described without being served.
//!
//! Adding an endpoint is one entry in `table()`:
//!
//! ```text
//! op(Get, "/api/v1/admin/overview", "getOverview", tag::ORG, "Organization overview", |r| r.to(admin::overview))
//!     .admin()
//!     .ok::<Overview>(200, "The overview")
//!     .errors(&[Code::NotFound]),
//! ```
//!
//! Error codes implied by the entry are added by `error_codes()`: the auth kind's, the body's
//! (`invalid_request`, `payload_too_large`, `unsupported_media_type`), a query's or path
//! parameter's (`invalid_request`, and `not_found` for an id in the path), and `internal`.

use std::collections::BTreeSet;

use actix_web::web;
use schemars::{JsonSchema, Schema, SchemaGenerator};

use super::schemas::*;
use super::{Code, activation, admin, azure, connectors, device_maps, directory, overview};
use super::{health, ldap_mappings, openapi, pagination, sync};
use crate::store;

/// Builds a schema (usually a `$ref` to a component) with the description's generator.
pub type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

fn reference<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

fn inline<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    T::json_schema(g)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Method {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

pub use Method::{Delete, Get, Patch, Post, Put};

impl Method {
    pub const ALL: [Method; 5] = [Get, Post, Put, Patch, Delete];

    pub fn as_str(self) -> &'static str {
        match self {
            Get => "GET",
            Post => "POST",
            Put => "PUT",
            Patch => "PATCH",
            Delete => "DELETE",
        }
    }

    /// The key of the operation in an OpenAPI path item.
    pub fn openapi_key(self) -> &'static str {
        match self {
            Get => "get",
            Post => "post",
            Put => "put",
            Patch => "patch",
            Delete => "delete",
        }
    }

    fn actix(self) -> actix_web::http::Method {
        use actix_web::http::Method as M;
        match self {
            Get => M::GET,
            Post => M::POST,
            Put => M::PUT,
            Patch => M::PATCH,
            Delete => M::DELETE,
        }
    }
}

/// How a caller proves who it is (docs/api.md, "Authentication").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    None,
    /// `Authorization: Bearer imd_adm_…`.
    AdminKey,
    /// `Authorization: Bearer imd_dev_…`.
    DeviceCredential,
    /// The mass-deployment token in the JSON body.
    TokenInBody,
    /// Organization, login and directory password in the JSON body.
    PasswordInBody,
    /// `registration_key` in the JSON body.
    RegistrationKey,
    /// `Authorization: Bearer imdc_…` plus `x-imd-connector-protocol: 1`.
    ConnectorCredential,
    /// `x-imd-cluster-time` and `x-imd-cluster-signature` (replicas only).
    ClusterSignature,
}

impl Auth {
    pub fn as_str(self) -> &'static str {
        match self {
            Auth::None => "none",
            Auth::AdminKey => "admin_key",
            Auth::DeviceCredential => "device_credential",
            Auth::TokenInBody => "token_in_body",
            Auth::PasswordInBody => "password_in_body",
            Auth::RegistrationKey => "registration_key",
            Auth::ConnectorCredential => "connector_credential",
            Auth::ClusterSignature => "cluster_signature",
        }
    }

    /// The codes a failed authentication of this kind answers with.
    pub fn codes(self) -> &'static [Code] {
        match self {
            Auth::None => &[],
            // A console session cookie works as an admin key too (with its CSRF check), and
            // wrong keys are rate-limited per address.
            Auth::AdminKey => &[Code::Unauthorized, Code::CsrfFailed, Code::RateLimited],
            Auth::ClusterSignature => &[Code::Unauthorized],
            Auth::DeviceCredential => &[Code::Unauthorized, Code::UserPreserved, Code::UserDeleted],
            Auth::TokenInBody => &[
                Code::TokenInvalid,
                Code::TokenExpired,
                Code::TokenRevoked,
                Code::RateLimited,
            ],
            Auth::PasswordInBody => &[Code::InvalidCredentials, Code::RateLimited],
            Auth::RegistrationKey => &[Code::RegistrationKeyInvalid, Code::RateLimited],
            Auth::ConnectorCredential => &[
                Code::ConnectorCredentialInvalid,
                Code::ProtocolVersionUnsupported,
            ],
        }
    }

    /// The OpenAPI security scheme (components.securitySchemes), for header-borne credentials.
    pub fn security_scheme(self) -> Option<&'static str> {
        match self {
            Auth::AdminKey => Some("adminKey"),
            Auth::DeviceCredential => Some("deviceCredential"),
            Auth::ConnectorCredential => Some("connectorCredential"),
            Auth::ClusterSignature => Some("clusterSignature"),
            _ => None,
        }
    }
}

/// Which JSON body limit the resource gets (`web::JsonConfig` in its `app_data`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonLimit {
    /// No JSON extractor on the route (the body, if any, is read by the handler).
    None,
    /// `limits.activation_body_bytes`.
    Activation,
    /// `limits.json_body_bytes` (the admin API).
    Admin,
}

#[derive(Debug, Clone, Copy)]
pub enum Body {
    None,
    Json { schema: SchemaFn, required: bool },
    Csv,
}

#[derive(Debug, Clone, Copy)]
pub enum Content {
    None,
    Json(SchemaFn),
    /// Another media type (a zip, the reference page); the schema is a plain string/binary.
    Other(&'static str),
}

#[derive(Debug, Clone, Copy)]
pub struct Success {
    pub status: u16,
    pub description: &'static str,
    pub content: Content,
}

/// Tags group operations in the description and on the reference page.
pub mod tag {
    pub const HEALTH: &str = "Health";
    pub const ACTIVATION: &str = "Activation";
    pub const ORG: &str = "Organization";
    pub const TOKENS: &str = "Tokens";
    pub const USERS: &str = "Users and devices";
    pub const DEVICE_MAPS: &str = "Device maps";
    pub const CONNECTORS: &str = "Connectors";
    pub const DIRECTORY: &str = "Directory";
    pub const AZURE: &str = "Azure AD";
    pub const SYNC: &str = "Sync";
    pub const REFERENCE: &str = "API description";

    /// Tags in the order the description lists them, with a line each.
    pub const ALL: [(&str, &str); 11] = [
        (
            HEALTH,
            "Liveness, readiness and the token-verification keys.",
        ),
        (ACTIVATION, "Devices activating, and asking who they are."),
        (
            ORG,
            "The organization of the admin key, and its admin keys.",
        ),
        (
            TOKENS,
            "Mass-deployment tokens and their deployment bundles.",
        ),
        (USERS, "Users, devices and the activation audit trail."),
        (
            DEVICE_MAPS,
            "IMD v4 device maps: CSV uploads and JSON mappings.",
        ),
        (
            CONNECTORS,
            "Directory connectors (IMD v2) and their channel.",
        ),
        (DIRECTORY, "AD/LDAP browsing, mappings and password checks."),
        (
            AZURE,
            "The Azure AD (IMD v5) app registration and mappings.",
        ),
        (SYNC, "Directory sync: settings, profiles and runs."),
        (REFERENCE, "This description and its reference page."),
    ];
}

/// One operation: what is served (method, path, handler) and how it is described.
#[derive(Clone)]
pub struct Operation {
    pub method: Method,
    /// The full path, with `{name}` parameters as actix and OpenAPI both write them.
    pub path: &'static str,
    pub operation_id: &'static str,
    pub tag: &'static str,
    pub summary: &'static str,
    pub description: Option<&'static str>,
    pub auth: Auth,
    pub body: Body,
    /// A query struct; each of its properties becomes a query parameter.
    pub query: Option<SchemaFn>,
    pub responses: Vec<Success>,
    /// Codes this operation can answer with beyond the implied ones (see `error_codes`).
    pub errors: Vec<Code>,
    pub json_limit: JsonLimit,
    /// Whether the operation can fail at all (`/healthz` cannot).
    pub infallible: bool,
    handler: fn(actix_web::Route) -> actix_web::Route,
}

impl std::fmt::Debug for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} ({})",
            self.method.as_str(),
            self.path,
            self.operation_id
        )
    }
}

fn op(
    method: Method,
    path: &'static str,
    operation_id: &'static str,
    tag: &'static str,
    summary: &'static str,
    handler: fn(actix_web::Route) -> actix_web::Route,
) -> Operation {
    Operation {
        method,
        path,
        operation_id,
        tag,
        summary,
        description: None,
        auth: Auth::None,
        body: Body::None,
        query: None,
        responses: Vec::new(),
        errors: Vec::new(),
        json_limit: JsonLimit::None,
        infallible: false,
        handler,
    }
}

impl Operation {
    fn auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }

    /// Admin-key auth and the admin JSON body limit.
    fn admin(mut self) -> Self {
        self.auth = Auth::AdminKey;
        self.json_limit = JsonLimit::Admin;
        self
    }

    fn about(mut self, description: &'static str) -> Self {
        self.description = Some(description);
        self
    }

    fn body<T: JsonSchema>(mut self) -> Self {
        self.body = Body::Json {
            schema: reference::<T>,
            required: true,
        };
        self
    }

    fn optional_body<T: JsonSchema>(mut self) -> Self {
        self.body = Body::Json {
            schema: reference::<T>,
            required: false,
        };
        self
    }

    fn csv_body(mut self) -> Self {
        self.body = Body::Csv;
        self
    }

    fn query<T: JsonSchema>(mut self) -> Self {
        self.query = Some(inline::<T>);
        self
    }

    fn ok<T: JsonSchema>(mut self, status: u16, description: &'static str) -> Self {
        self.responses.push(Success {
            status,
            description,
            content: Content::Json(reference::<T>),
        });
        self
    }

    fn empty(mut self, status: u16, description: &'static str) -> Self {
        self.responses.push(Success {
            status,
            description,
            content: Content::None,
        });
        self
    }

    fn other(mut self, status: u16, description: &'static str, media: &'static str) -> Self {
        self.responses.push(Success {
            status,
            description,
            content: Content::Other(media),
        });
        self
    }

    fn errors(mut self, codes: &[Code]) -> Self {
        self.errors.extend_from_slice(codes);
        self
    }

    fn limit(mut self, limit: JsonLimit) -> Self {
        self.json_limit = limit;
        self
    }

    fn infallible(mut self) -> Self {
        self.infallible = true;
        self
    }

    /// The path's `{name}` parameters, in order.
    pub fn path_params(&self) -> Vec<&'static str> {
        self.path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .collect()
    }

    /// Every error code the operation can answer with: its own, its auth kind's, those its body,
    /// query and path imply, and `internal` (plus `unavailable`: every fallible route reaches the
    /// database or a resolver). Sorted by status, then declaration order.
    pub fn error_codes(&self) -> Vec<Code> {
        if self.infallible {
            return Vec::new();
        }
        let mut set: BTreeSet<(u16, usize)> = BTreeSet::new();
        let mut add = |c: Code| {
            set.insert((c.status().as_u16(), c.index()));
        };
        self.errors.iter().copied().for_each(&mut add);
        self.auth.codes().iter().copied().for_each(&mut add);
        match self.body {
            Body::None => {}
            Body::Json { .. } | Body::Csv => {
                add(Code::InvalidRequest);
                add(Code::PayloadTooLarge);
                add(Code::UnsupportedMediaType);
            }
        }
        if self.query.is_some() {
            add(Code::InvalidRequest);
        }
        if !self.path_params().is_empty() {
            add(Code::InvalidRequest);
            add(Code::NotFound);
        }
        add(Code::Internal);
        add(Code::Unavailable);
        set.into_iter().map(|(_, i)| Code::ALL[i]).collect()
    }

    /// The actix route for this entry: its method and its handler.
    pub fn route(&self) -> actix_web::Route {
        (self.handler)(web::method(self.method.actix()))
    }
}

/// Every operation, in the order the description lists them.
pub fn operations() -> &'static [Operation] {
    static OPS: std::sync::LazyLock<Vec<Operation>> = std::sync::LazyLock::new(table);
    &OPS
}

/// The distinct paths of the table, in first-seen order, each with its operations.
pub fn by_path() -> Vec<(&'static str, Vec<&'static Operation>)> {
    let mut out: Vec<(&'static str, Vec<&'static Operation>)> = Vec::new();
    for o in operations() {
        match out.iter_mut().find(|(p, _)| *p == o.path) {
            Some((_, v)) => v.push(o),
            None => out.push((o.path, vec![o])),
        }
    }
    out
}

const REGISTER_PATH: &str = crate::connector::proto::REGISTER_PATH;
const CHANNEL_PATH: &str = crate::connector::proto::CHANNEL_PATH;

fn table() -> Vec<Operation> {
    use Code as C;
    use tag::*;
    let dir_errors = [C::DirectoryError, C::ConnectorUnavailable];
    vec![
        // Health and keys.
        op(Get, "/healthz", "healthz", HEALTH, "Liveness", |r| {
            r.to(health::healthz)
        })
        .about("The process answers; touches nothing.")
        .ok::<Health>(200, "Alive")
        .infallible(),
        op(Get, "/readyz", "readyz", HEALTH, "Readiness", |r| {
            r.to(health::readyz)
        })
        .about("The database takes a write within 3 s.")
        .ok::<Ready>(200, "Ready"),
        op(Get, "/api/v1/keys", "getKeys", HEALTH, "Token-verification keys (JWKS)", |r| {
            r.to(health::jwks)
        })
        .infallible()
        .ok::<Jwks>(200, "The public signing keys"),
        // The description itself.
        op(Get, openapi::DESCRIPTION_PATH, "getOpenApi", REFERENCE, "This OpenAPI 3.1 description", |r| {
            r.to(openapi::description)
        })
        .other(200, "The description", "application/json")
        .infallible(),
        op(Get, openapi::PAGE_PATH, "getApiReference", REFERENCE, "The browsable API reference", |r| {
            r.to(openapi::page)
        })
        .other(200, "An HTML page that renders this description", "text/html")
        .infallible(),
        op(Get, openapi::SCRIPT_PATH, "getApiReferenceScript", REFERENCE, "The reference page's script", |r| {
            r.to(openapi::script)
        })
        .other(200, "JavaScript", "text/javascript")
        .infallible(),
        op(Get, openapi::STYLE_PATH, "getApiReferenceStyle", REFERENCE, "The reference page's style sheet", |r| {
            r.to(openapi::style)
        })
        .other(200, "CSS", "text/css")
        .infallible(),
        // Activation.
        op(Post, "/api/v1/activations", "activate", ACTIVATION, "Activate a device with a token", |r| {
            r.to(activation::activate)
        })
        .auth(Auth::TokenInBody)
        .limit(JsonLimit::Activation)
        .about("No Content-Type is accepted too. Failed attempts are audited and count against the address's limit.")
        .body::<crate::domain::request::RawActivation>()
        .ok::<crate::activation::ActivationResponse>(201, "A new binding")
        .ok::<crate::activation::ActivationResponse>(200, "A repeat of an existing binding")
        .errors(&[
            C::TokenExhausted, C::UserNotMapped, C::DeviceNotMapped, C::DeviceConflict,
            C::UserPreserved, C::UserDeleted, C::UserNotFound, C::UserDisabled,
            C::DirectoryUnavailable, C::ConnectorUnavailable, C::DirectoryError,
        ]),
        op(Get, "/api/v1/device", "getOwnDevice", ACTIVATION, "The calling device and its user", |r| {
            r.to(activation::device)
        })
        .auth(Auth::DeviceCredential)
        .ok::<DeviceWithUser>(200, "The device and its user"),
        op(Post, "/api/v1/activations/password", "activateWithPassword", DIRECTORY, "Activate with directory credentials", |r| {
            r.to(directory::activate_password)
        })
        .auth(Auth::PasswordInBody)
        .body::<directory::PasswordBody>()
        .ok::<crate::activation::ActivationResponse>(201, "A new binding")
        .ok::<crate::activation::ActivationResponse>(200, "A repeat of an existing binding")
        .errors(&[
            C::TokenRevoked, C::UserDisabled, C::UserNotMapped, C::UserNotFound,
            C::TokenExhausted, C::DeviceNotMapped, C::DeviceConflict, C::UserPreserved,
            C::UserDeleted, C::ConnectorUnavailable, C::DirectoryError,
        ]),
        op(Post, "/api/v1/auth/ldap", "checkLdapPassword", DIRECTORY, "Check a directory password (web login)", |r| {
            r.to(directory::auth_ldap)
        })
        .auth(Auth::PasswordInBody)
        .about("The password activation's body without `device`; writes nothing.")
        .body::<directory::PasswordBody>()
        .ok::<LdapLogin>(200, "The directory user")
        .errors(&[C::TokenRevoked, C::UserDisabled, C::UserNotMapped, C::UserNotFound, C::ConnectorUnavailable, C::DirectoryError]),
        // Connectors (their side).
        op(Post, REGISTER_PATH, "registerConnector", CONNECTORS, "Register a connector", |r| {
            r.to(connectors::register)
        })
        .auth(Auth::RegistrationKey)
        .limit(JsonLimit::Activation)
        .body::<crate::connector::proto::RegisterRequest>()
        .ok::<crate::connector::proto::RegisterResponse>(200, "The connector's credential, shown once"),
        op(Get, CHANNEL_PATH, "connectorChannel", CONNECTORS, "The connector's WebSocket", |r| {
            r.to(directory::channel)
        })
        .auth(Auth::ConnectorCredential)
        .about("docs/connector-protocol.md. A malformed upgrade is 400.")
        .empty(101, "Switching to the WebSocket protocol")
        .errors(&[C::InvalidRequest]),
        op(Post, "/api/v1/internal/connector-calls", "forwardConnectorCall", CONNECTORS, "A connector call forwarded between replicas", |r| {
            r.to(directory::forwarded)
        })
        .auth(Auth::ClusterSignature)
        .body::<ForwardedCall>()
        .ok::<ForwardedResult>(200, "What became of the call"),
        // The organization and its admin keys.
        op(Get, "/api/v1/admin/org", "getOrg", ORG, "The organization", |r| r.to(admin::get_org))
            .admin()
            .ok::<store::OrgRow>(200, "The organization"),
        op(Patch, "/api/v1/admin/org", "patchOrg", ORG, "Change the organization's settings", |r| {
            r.to(admin::patch_org)
        })
        .admin()
        .body::<admin::OrgPatch>()
        .ok::<store::OrgRow>(200, "The organization as changed")
        .errors(&[C::Conflict]),
        op(Post, "/api/v1/admin/admin-keys", "createAdminKey", ORG, "Create an admin key", |r| {
            r.to(admin::create_admin_key)
        })
        .admin()
        .body::<admin::NewAdminKey>()
        .ok::<CreatedAdminKey>(201, "The key, shown once"),
        op(Get, "/api/v1/admin/admin-keys", "listAdminKeys", ORG, "List admin keys", |r| {
            r.to(admin::list_admin_keys)
        })
        .admin()
        .ok::<List<store::AdminKeyRow>>(200, "Every admin key (not paginated)"),
        op(Post, "/api/v1/admin/admin-keys/{id}/revoke", "revokeAdminKey", ORG, "Revoke an admin key", |r| {
            r.to(admin::revoke_admin_key)
        })
        .admin()
        .empty(204, "Revoked")
        .errors(&[C::Conflict]),
        // Tokens.
        op(Post, "/api/v1/admin/tokens", "mintToken", TOKENS, "Mint a mass-deployment token", |r| {
            r.to(admin::mint_token)
        })
        .admin()
        .body::<admin::MintRequest>()
        .ok::<MintedToken>(201, "The token, its string shown once"),
        op(Get, "/api/v1/admin/tokens", "listTokens", TOKENS, "List tokens", |r| {
            r.to(admin::list_tokens)
        })
        .admin()
        .query::<pagination::PageQuery>()
        .ok::<pagination::Paged<TokenView>>(200, "A page of tokens"),
        op(Get, "/api/v1/admin/tokens/{id}", "getToken", TOKENS, "A token", |r| {
            r.to(admin::get_token)
        })
        .admin()
        .ok::<TokenView>(200, "The token"),
        op(Post, "/api/v1/admin/tokens/{id}/revoke", "revokeToken", TOKENS, "Revoke a token", |r| {
            r.to(admin::revoke_token)
        })
        .admin()
        .ok::<TokenView>(200, "The revoked token"),
        op(Post, "/api/v1/admin/tokens/{id}/rotate", "rotateToken", TOKENS, "Rotate a token", |r| {
            r.to(admin::rotate_token)
        })
        .admin()
        .about("A successor with the same settings now; the old token keeps working for `grace_days`.")
        .optional_body::<admin::RotateRequest>()
        .ok::<RotatedToken>(201, "The successor, with the previous token's view")
        .errors(&[C::Conflict]),
        op(Post, "/api/v1/admin/tokens/{id}/bundle", "tokenBundle", TOKENS, "The deployment bundle of a token (zip)", |r| {
            r.to(admin::token_bundle)
        })
        .admin()
        .query::<admin::BundleQuery>()
        .other(200, "GPO and MDM files; warnings in `x-imd-warnings`", "application/zip")
        .errors(&[C::Conflict]),
        op(Get, "/api/v1/admin/overview", "getOverview", ORG, "The rollout at a glance", |r| {
            r.to(overview::overview)
        })
        .admin()
        .query::<overview::OverviewQuery>()
        .ok::<overview::Overview>(200, "Progress per token, attempts over time, top failures, directory health"),
        // Users, devices, activations.
        op(Get, "/api/v1/admin/users", "listUsers", USERS, "List users", |r| {
            r.to(admin::list_users)
        })
        .admin()
        .query::<admin::UserQuery>()
        .ok::<pagination::Paged<store::UserRow>>(200, "A page of users"),
        op(Get, "/api/v1/admin/users/{id}", "getUser", USERS, "A user", |r| r.to(admin::get_user))
            .admin()
            .ok::<store::UserRow>(200, "The user"),
        op(Get, "/api/v1/admin/devices", "listDevices", USERS, "List devices", |r| {
            r.to(admin::list_devices)
        })
        .admin()
        .query::<admin::DeviceQuery>()
        .ok::<pagination::Paged<store::DeviceRow>>(200, "A page of devices"),
        op(Get, "/api/v1/admin/devices/{id}", "getAdminDevice", USERS, "A device", |r| {
            r.to(admin::get_device)
        })
        .admin()
        .ok::<store::DeviceRow>(200, "The device"),
        op(Post, "/api/v1/admin/devices/{id}/revoke", "revokeDevice", USERS, "Revoke a device", |r| {
            r.to(admin::revoke_device)
        })
        .admin()
        .ok::<store::DeviceRow>(200, "The revoked device"),
        op(Get, "/api/v1/admin/activations", "listActivations", USERS, "The activation audit trail", |r| {
            r.to(admin::list_activations)
        })
        .admin()
        .query::<admin::ActivationQuery>()
        .ok::<pagination::Paged<store::ActivationRow>>(200, "A page of attempts"),
        // Device maps.
        op(Post, "/api/v1/admin/device-maps", "uploadDeviceMap", DEVICE_MAPS, "Upload a device map (CSV)", |r| {
            r.to(device_maps::upload)
        })
        .admin()
        .csv_body()
        .query::<device_maps::UploadQuery>()
        .ok::<crate::devicemap::import::ImportReport>(200, "The report (or, with Accept: text/csv, the failing rows)")
        .errors(&[C::DeviceMapInvalid]),
        op(Post, "/api/v1/admin/device-mappings", "createDeviceMappings", DEVICE_MAPS, "Create device mappings (JSON)", |r| {
            r.to(device_maps::create_mappings)
        })
        .admin()
        .body::<DeviceMappingsInput>()
        .ok::<DeviceMappingsCreated>(201, "The stored mapping(s)")
        .errors(&[C::DeviceMapInvalid]),
        op(Get, "/api/v1/admin/device-mappings", "listDeviceMappings", DEVICE_MAPS, "List device mappings", |r| {
            r.to(device_maps::list_mappings)
        })
        .admin()
        .query::<device_maps::MappingQuery>()
        .ok::<pagination::Paged<store::StoredMapping>>(200, "A page of mappings"),
        op(Get, "/api/v1/admin/device-mappings/{id}", "getDeviceMapping", DEVICE_MAPS, "A device mapping", |r| {
            r.to(device_maps::get_mapping)
        })
        .admin()
        .ok::<store::StoredMapping>(200, "The mapping"),
        op(Delete, "/api/v1/admin/device-mappings/{id}", "deleteDeviceMapping", DEVICE_MAPS, "Delete a pending device mapping", |r| {
            r.to(device_maps::delete_mapping)
        })
        .admin()
        .empty(204, "Deleted")
        .errors(&[C::Conflict]),
        // Connectors (the admin side).
        op(Post, "/api/v1/admin/connectors", "createConnector", CONNECTORS, "Create a connector", |r| {
            r.to(connectors::create)
        })
        .admin()
        .body::<connectors::NewConnector>()
        .ok::<connectors::ConnectorKey>(201, "The connector and its registration key")
        .errors(&[C::Conflict]),
        op(Get, "/api/v1/admin/connectors", "listConnectors", CONNECTORS, "List connectors", |r| {
            r.to(connectors::list)
        })
        .admin()
        .ok::<List<connectors::ConnectorView>>(200, "Every connector"),
        op(Get, "/api/v1/admin/connectors/{id}", "getConnector", CONNECTORS, "A connector", |r| {
            r.to(connectors::get)
        })
        .admin()
        .ok::<connectors::ConnectorView>(200, "The connector"),
        op(Post, "/api/v1/admin/connectors/{id}/registration-key", "reissueRegistrationKey", CONNECTORS, "A new registration key", |r| {
            r.to(connectors::reissue_key)
        })
        .admin()
        .ok::<connectors::ConnectorKey>(200, "The new key"),
        op(Delete, "/api/v1/admin/connectors/{id}", "retireConnector", CONNECTORS, "Retire a connector", |r| {
            r.to(connectors::retire)
        })
        .admin()
        .empty(204, "Retired"),
        // Directory browsing.
        op(Get, "/api/v1/admin/directory/naming-contexts", "namingContexts", DIRECTORY, "The directory's root DSE", |r| {
            r.to(directory::naming_contexts)
        })
        .admin()
        .ok::<NamingContexts>(200, "The root DSE")
        .errors(&dir_errors),
        op(Get, "/api/v1/admin/directory/ous", "directoryOus", DIRECTORY, "OUs below a base", |r| {
            r.to(directory::ous)
        })
        .admin()
        .query::<directory::OusQuery>()
        .ok::<DirectoryEntries>(200, "OUs and containers")
        .errors(&[C::DirectoryError, C::ConnectorUnavailable, C::NotFound]),
        op(Get, "/api/v1/admin/directory/groups", "directoryGroups", DIRECTORY, "Groups under a base", |r| {
            r.to(directory::groups)
        })
        .admin()
        .query::<directory::GroupsQuery>()
        .ok::<DirectoryEntries>(200, "A page of groups")
        .errors(&[C::DirectoryError, C::ConnectorUnavailable, C::NotFound]),
        // LDAP mappings.
        op(Post, "/api/v1/admin/ldap-mappings", "createLdapMapping", DIRECTORY, "Create an AD/LDAP mapping", |r| {
            r.to(ldap_mappings::create)
        })
        .admin()
        .body::<ldap_mappings::NewMapping>()
        .ok::<store::LdapMappingRow>(201, "The mapping")
        .errors(&[C::MappingInvalid, C::Conflict]),
        op(Get, "/api/v1/admin/ldap-mappings", "listLdapMappings", DIRECTORY, "List AD/LDAP mappings", |r| {
            r.to(ldap_mappings::list)
        })
        .admin()
        .ok::<List<store::LdapMappingRow>>(200, "Every mapping, by priority"),
        op(Get, "/api/v1/admin/ldap-mappings/{id}", "getLdapMapping", DIRECTORY, "An AD/LDAP mapping", |r| {
            r.to(ldap_mappings::get)
        })
        .admin()
        .ok::<store::LdapMappingRow>(200, "The mapping"),
        op(Patch, "/api/v1/admin/ldap-mappings/{id}", "patchLdapMapping", DIRECTORY, "Change an AD/LDAP mapping", |r| {
            r.to(ldap_mappings::patch)
        })
        .admin()
        .body::<ldap_mappings::MappingPatch>()
        .ok::<store::LdapMappingRow>(200, "The mapping as changed")
        .errors(&[C::MappingInvalid, C::Conflict]),
        op(Delete, "/api/v1/admin/ldap-mappings/{id}", "deleteLdapMapping", DIRECTORY, "Delete an AD/LDAP mapping", |r| {
            r.to(ldap_mappings::delete)
        })
        .admin()
        .empty(204, "Deleted"),
        // Azure AD.
        op(Put, "/api/v1/admin/azure", "putAzureConfig", AZURE, "Set the Azure AD app registration", |r| {
            r.to(azure::put_config)
        })
        .admin()
        .body::<azure::PutConfig>()
        .ok::<AzureConfigView>(200, "The registration (without the secret)"),
        op(Get, "/api/v1/admin/azure", "getAzureConfig", AZURE, "The Azure AD app registration", |r| {
            r.to(azure::get_config)
        })
        .admin()
        .ok::<AzureConfigView>(200, "The registration (without the secret)")
        .errors(&[C::AzureNotConfigured]),
        op(Post, "/api/v1/admin/azure/test", "testAzure", AZURE, "Test the Azure AD registration", |r| {
            r.to(azure::test)
        })
        .admin()
        .ok::<AzureTestResult>(200, "The test's outcome (a refusal by Azure AD is `ok: false`)")
        .errors(&[C::AzureNotConfigured, C::DirectoryUnavailable]),
        op(Get, "/api/v1/admin/azure/groups", "azureGroups", AZURE, "Search Azure AD groups", |r| {
            r.to(azure::groups)
        })
        .admin()
        .query::<azure::GroupQuery>()
        .ok::<ObjectPage>(200, "Matching groups")
        .errors(&[C::AzureNotConfigured, C::DirectoryError, C::DirectoryUnavailable]),
        op(Post, "/api/v1/admin/azure-mappings", "createAzureMapping", AZURE, "Create an Azure AD mapping", |r| {
            r.to(azure::create_mapping)
        })
        .admin()
        .body::<azure::NewMapping>()
        .ok::<AzureMappingView>(201, "The mapping")
        .errors(&[C::MappingInvalid, C::Conflict]),
        op(Get, "/api/v1/admin/azure-mappings", "listAzureMappings", AZURE, "List Azure AD mappings", |r| {
            r.to(azure::list_mappings)
        })
        .admin()
        .ok::<List<AzureMappingView>>(200, "Every mapping, by priority"),
        op(Get, "/api/v1/admin/azure-mappings/{id}", "getAzureMapping", AZURE, "An Azure AD mapping", |r| {
            r.to(azure::get_mapping)
        })
        .admin()
        .ok::<AzureMappingView>(200, "The mapping"),
        op(Patch, "/api/v1/admin/azure-mappings/{id}", "patchAzureMapping", AZURE, "Change an Azure AD mapping", |r| {
            r.to(azure::patch_mapping)
        })
        .admin()
        .body::<azure::MappingPatch>()
        .ok::<AzureMappingView>(200, "The mapping as changed")
        .errors(&[C::MappingInvalid, C::Conflict]),
        op(Delete, "/api/v1/admin/azure-mappings/{id}", "deleteAzureMapping", AZURE, "Delete an Azure AD mapping", |r| {
            r.to(azure::delete_mapping)
        })
        .admin()
        .empty(204, "Deleted"),
        // Sync.
        op(Get, "/api/v1/admin/sync-settings", "getSyncSettings", SYNC, "Sync settings", |r| {
            r.to(sync::get_settings)
        })
        .admin()
        .ok::<SyncSettings>(200, "The settings"),
        op(Put, "/api/v1/admin/sync-settings", "putSyncSettings", SYNC, "Change sync settings", |r| {
            r.to(sync::put_settings)
        })
        .admin()
        .body::<SettingsInput>()
        .ok::<SyncSettings>(200, "The settings as changed")
        .errors(&[C::InvalidSetting]),
        op(Get, "/api/v1/admin/profiles", "listProfiles", SYNC, "Profiles and their retention policy", |r| {
            r.to(sync::list_profiles)
        })
        .admin()
        .ok::<List<Profile>>(200, "Every profile"),
        op(Get, "/api/v1/admin/profiles/{name}", "getProfile", SYNC, "A profile's retention policy", |r| {
            r.to(sync::get_profile)
        })
        .admin()
        .ok::<Profile>(200, "The profile"),
        op(Put, "/api/v1/admin/profiles/{name}", "putProfile", SYNC, "Set a profile's retention policy", |r| {
            r.to(sync::put_profile)
        })
        .admin()
        .body::<SettingsInput>()
        .ok::<Profile>(200, "The profile as changed")
        .errors(&[C::InvalidSetting]),
        op(Delete, "/api/v1/admin/profiles/{name}", "deleteProfile", SYNC, "Reset a profile to the defaults", |r| {
            r.to(sync::delete_profile)
        })
        .admin()
        .ok::<Profile>(200, "The profile with the default policy"),
        op(Post, "/api/v1/admin/sync", "startSync", SYNC, "Start a sync run", |r| {
            r.to(sync::start)
        })
        .admin()
        .query::<sync::StartQuery>()
        .ok::<SyncStarted>(202, "The run, started")
        .errors(&[C::InvalidSetting, C::SyncInProgress, C::SyncNotConfigured]),
        op(Get, "/api/v1/admin/sync-runs", "listSyncRuns", SYNC, "Sync runs", |r| {
            r.to(sync::list_runs)
        })
        .admin()
        .query::<pagination::PageQuery>()
        .ok::<pagination::Paged<SyncRun>>(200, "A page of runs"),
        op(Get, "/api/v1/admin/sync-runs/{id}", "getSyncRun", SYNC, "A sync run", |r| {
            r.to(sync::get_run)
        })
        .admin()
        .ok::<SyncRun>(200, "The run"),
        op(Get, "/api/v1/admin/sync-runs/{id}/users", "syncRunUsers", SYNC, "A run's per-user report", |r| {
            r.to(sync::run_users)
        })
        .admin()
        .query::<sync::RunUsersQuery>()
        .ok::<SyncRunUserPage>(200, "A page of the report"),
        op(Post, "/api/v1/admin/sync-runs/{id}/approve", "approveSyncRun", SYNC, "Approve a run's held-back changes", |r| {
            r.to(sync::approve)
        })
        .admin()
        .ok::<SyncRun>(200, "The run")
        .errors(&[C::SyncRunNotPending, C::SyncInProgress]),
        op(Post, "/api/v1/admin/sync-runs/{id}/reject", "rejectSyncRun", SYNC, "Reject a run's held-back changes", |r| {
            r.to(sync::reject)
        })
        .admin()
        .ok::<SyncRun>(200, "The run")
        .errors(&[C::SyncRunNotPending]),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_are_unique_and_well_formed() {
        let mut seen = std::collections::HashSet::new();
        let mut ids = std::collections::HashSet::new();
        for o in operations() {
            assert!(seen.insert((o.method, o.path)), "{o:?} twice");
            assert!(ids.insert(o.operation_id), "operationId of {o:?} twice");
            assert!(o.path.starts_with('/'), "{o:?}");
            assert!(!o.responses.is_empty(), "{o:?} has no success response");
        }
    }

    #[test]
    fn one_json_limit_per_path() {
        for (path, ops) in by_path() {
            assert!(
                ops.iter().all(|o| o.json_limit == ops[0].json_limit),
                "{path}: operations disagree on the JSON limit"
            );
        }
    }

    #[test]
    fn implied_codes_are_added() {
        let mint = operations()
            .iter()
            .find(|o| o.operation_id == "mintToken")
            .unwrap();
        let codes = mint.error_codes();
        for c in [
            Code::Unauthorized,
            Code::InvalidRequest,
            Code::PayloadTooLarge,
            Code::Internal,
        ] {
            assert!(codes.contains(&c), "{}", c.as_str());
        }
        let healthz = operations().iter().find(|o| o.path == "/healthz").unwrap();
        assert!(healthz.error_codes().is_empty());
    }
}
