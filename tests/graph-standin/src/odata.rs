//! Graph response envelope: headers, error bodies, `$select` projection, query options, opaque
//! paging tokens.

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::tenant::Props;

pub(crate) const ODATA_JSON: &str = "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8";

/// `YYYY-MM-DDTHH:MM:SS` (UTC, no zone, no fraction): Graph's `innerError.date`.
pub(crate) fn graph_date(t: OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// `YYYY-MM-DD HH:MM:SSZ`: the identity platform's `timestamp`.
pub(crate) fn aad_timestamp(t: OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// A Graph error about to be rendered in the §2 envelope.
#[derive(Debug)]
pub(crate) struct GraphError {
    pub status: u16,
    pub code: String,
    pub message: String,
    pub headers: Vec<(String, String)>,
    /// Extra members of `innerError` (the 429 body carries `code`, `message`, `status`).
    pub inner: Vec<(String, Value)>,
}

impl GraphError {
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> GraphError {
        GraphError {
            status,
            code: code.into(),
            message: message.into(),
            headers: Vec::new(),
            inner: Vec::new(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> GraphError {
        GraphError::new(400, "Request_BadRequest", message)
    }
    pub fn unsupported(message: impl Into<String>) -> GraphError {
        GraphError::new(400, "Request_UnsupportedQuery", message)
    }
    pub fn not_found(key: &str) -> GraphError {
        GraphError::new(
            404,
            "Request_ResourceNotFound",
            format!(
                "Resource '{key}' does not exist or one of its queried reference-property objects are not present."
            ),
        )
    }
    pub fn denied() -> GraphError {
        GraphError::new(
            403,
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation.",
        )
    }
    pub fn header(mut self, name: &str, value: impl Into<String>) -> GraphError {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn body(&self, request_id: &str, client_request_id: &str) -> Value {
        let mut inner = serde_json::Map::new();
        for (k, v) in &self.inner {
            inner.insert(k.clone(), v.clone());
        }
        inner.insert("date".into(), graph_date(OffsetDateTime::now_utc()).into());
        inner.insert("request-id".into(), request_id.into());
        inner.insert("client-request-id".into(), client_request_id.into());
        json!({"error": {"code": self.code, "message": self.message, "innerError": inner}})
    }

    pub fn into_response(self, request_id: &str, client_request_id: &str) -> HttpResponse {
        let body = self.body(request_id, client_request_id);
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut b = HttpResponse::build(status);
        for (k, v) in &self.headers {
            b.insert_header((k.as_str(), v.as_str()));
        }
        b.insert_header(("Content-Type", ODATA_JSON))
            .body(body.to_string())
    }
}

/// Decoded query options; names compared case-insensitively.
pub(crate) struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    pub fn parse(raw: &str) -> Query {
        Query {
            pairs: form_urlencoded::parse(raw.as_bytes())
                .map(|(k, v)| (k.to_ascii_lowercase(), v.into_owned()))
                .collect(),
        }
    }
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn count_true(&self) -> bool {
        self.get("$count")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }
    /// `$top`: 1..=max, else 400.
    pub fn top(&self, max: usize) -> Result<Option<usize>, GraphError> {
        match self.get("$top") {
            None => Ok(None),
            Some(t) => match t.trim().parse::<usize>() {
                Ok(n) if (1..=max).contains(&n) => Ok(Some(n)),
                _ => Err(GraphError::bad_request(format!(
                    "Invalid page size specified: '{t}'. Must be between 1 and {max} inclusive."
                ))),
            },
        }
    }
}

/// Properties a `$select` may name, per object type, plus which default to `[]` when unset.
pub(crate) struct Schema {
    pub type_name: &'static str,
    pub props: &'static [&'static str],
    pub defaults: &'static [&'static str],
    pub collections: &'static [&'static str],
    /// Whether `extension_*` directory extension properties exist on this type.
    pub extensions: bool,
}

pub(crate) const USER: Schema = Schema {
    type_name: "user",
    props: &[
        "aboutMe",
        "accountEnabled",
        "ageGroup",
        "assignedLicenses",
        "assignedPlans",
        "birthday",
        "businessPhones",
        "city",
        "companyName",
        "consentProvidedForMinor",
        "country",
        "createdDateTime",
        "creationType",
        "deletedDateTime",
        "department",
        "displayName",
        "employeeHireDate",
        "employeeId",
        "employeeOrgData",
        "employeeType",
        "externalUserState",
        "faxNumber",
        "givenName",
        "hireDate",
        "id",
        "identities",
        "imAddresses",
        "interests",
        "isResourceAccount",
        "jobTitle",
        "lastPasswordChangeDateTime",
        "legalAgeGroupClassification",
        "mail",
        "mailNickname",
        "mobilePhone",
        "mySite",
        "officeLocation",
        "onPremisesDistinguishedName",
        "onPremisesDomainName",
        "onPremisesExtensionAttributes",
        "onPremisesImmutableId",
        "onPremisesLastSyncDateTime",
        "onPremisesSamAccountName",
        "onPremisesSecurityIdentifier",
        "onPremisesSyncEnabled",
        "onPremisesUserPrincipalName",
        "otherMails",
        "passwordPolicies",
        "postalCode",
        "preferredDataLocation",
        "preferredLanguage",
        "preferredName",
        "proxyAddresses",
        "securityIdentifier",
        "showInAddressList",
        "state",
        "streetAddress",
        "surname",
        "usageLocation",
        "userPrincipalName",
        "userType",
    ],
    defaults: &[
        "businessPhones",
        "displayName",
        "givenName",
        "jobTitle",
        "mail",
        "mobilePhone",
        "officeLocation",
        "preferredLanguage",
        "surname",
        "userPrincipalName",
        "id",
    ],
    collections: &[
        "assignedLicenses",
        "assignedPlans",
        "businessPhones",
        "identities",
        "imAddresses",
        "interests",
        "otherMails",
        "proxyAddresses",
    ],
    extensions: true,
};

pub(crate) const GROUP: Schema = Schema {
    type_name: "group",
    props: &[
        "id",
        "deletedDateTime",
        "classification",
        "createdDateTime",
        "description",
        "displayName",
        "expirationDateTime",
        "groupTypes",
        "isAssignableToRole",
        "mail",
        "mailEnabled",
        "mailNickname",
        "membershipRule",
        "membershipRuleProcessingState",
        "onPremisesSamAccountName",
        "onPremisesSecurityIdentifier",
        "onPremisesSyncEnabled",
        "proxyAddresses",
        "renewedDateTime",
        "securityEnabled",
        "securityIdentifier",
        "visibility",
    ],
    defaults: &[
        "id",
        "deletedDateTime",
        "classification",
        "createdDateTime",
        "description",
        "displayName",
        "expirationDateTime",
        "groupTypes",
        "isAssignableToRole",
        "mail",
        "mailEnabled",
        "mailNickname",
        "membershipRule",
        "membershipRuleProcessingState",
        "onPremisesSamAccountName",
        "onPremisesSecurityIdentifier",
        "onPremisesSyncEnabled",
        "proxyAddresses",
        "renewedDateTime",
        "securityEnabled",
        "securityIdentifier",
        "visibility",
    ],
    collections: &["groupTypes", "proxyAddresses"],
    extensions: true,
};

pub(crate) const ROLE: Schema = Schema {
    type_name: "directoryRole",
    props: &[
        "id",
        "deletedDateTime",
        "description",
        "displayName",
        "roleTemplateId",
    ],
    defaults: &[
        "id",
        "deletedDateTime",
        "description",
        "displayName",
        "roleTemplateId",
    ],
    collections: &[],
    extensions: false,
};

impl Schema {
    /// Canonical spelling of a property name (names are case-insensitive in OData requests).
    pub fn canonical(&self, name: &str) -> Option<String> {
        if let Some(p) = self.props.iter().find(|p| p.eq_ignore_ascii_case(name)) {
            return Some((*p).to_owned());
        }
        (self.extensions && name.len() > 10 && name[..10].eq_ignore_ascii_case("extension_"))
            .then(|| name.to_owned())
    }
}

/// Parses `$select` against the schemas an item may have; unknown names are a 400.
pub(crate) fn parse_select(
    raw: Option<&str>,
    schemas: &[&Schema],
) -> Result<Option<Vec<String>>, GraphError> {
    let Some(raw) = raw else { return Ok(None) };
    let mut out = Vec::new();
    for name in raw.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let canon = schemas.iter().find_map(|s| s.canonical(name)).ok_or_else(|| {
            GraphError::bad_request(format!(
                "Parsing OData Select and Expand failed: Could not find a property named '{name}' on type 'microsoft.graph.{}'.",
                schemas[0].type_name
            ))
        })?;
        if !out.contains(&canon) {
            out.push(canon);
        }
    }
    Ok(Some(out))
}

/// Looks a property up, case-insensitively for extension names.
fn lookup<'a>(props: &'a Props, name: &str) -> Option<&'a Value> {
    props.get(name).or_else(|| {
        props
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

/// Projects an object: the `$select` list exactly (no implicit `id`, `null` or `[]` for unset),
/// or the type's default set. `limited`: only `id` keeps its value (the §4 "limited information").
pub(crate) fn project(
    props: &Props,
    schema: &Schema,
    select: Option<&[String]>,
    limited: bool,
) -> Props {
    let mut out = Props::new();
    let names: Vec<&str> = match select {
        Some(s) => s.iter().map(String::as_str).collect(),
        None => schema.defaults.to_vec(),
    };
    for name in names {
        // A select list shared by several types: skip names this type does not have.
        if schema.canonical(name).is_none() {
            continue;
        }
        let v = if limited && name != "id" {
            Value::Null
        } else {
            match lookup(props, name) {
                Some(v) => v.clone(),
                None if schema.collections.contains(&name) => Value::Array(Vec::new()),
                None => Value::Null,
            }
        };
        out.insert(name.to_owned(), v);
    }
    out
}

/// State carried inside an opaque `$skiptoken` / `$deltatoken`.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub(crate) struct PageToken {
    /// Route kind and key the token belongs to.
    pub r: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub select: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orderby: Option<String>,
    #[serde(default)]
    pub top: usize,
    #[serde(default)]
    pub off: usize,
    /// The first request was an advanced query: ConsistencyLevel must be resent.
    #[serde(default)]
    pub adv: bool,
    /// Delta: changes after this sequence number (None = full round).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    /// Delta: sequence number the round started at (becomes the next deltaLink's `since`).
    #[serde(default)]
    pub snap: u64,
}

impl PageToken {
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!("RFNwd{}", URL_SAFE_NO_PAD.encode(json))
    }
    pub fn decode(s: &str, route: &str) -> Result<PageToken, GraphError> {
        let t: Option<PageToken> = s
            .strip_prefix("RFNwd")
            .and_then(|b| URL_SAFE_NO_PAD.decode(b).ok())
            .and_then(|b| serde_json::from_slice(&b).ok());
        match t {
            Some(t) if t.r == route => Ok(t),
            _ => Err(GraphError::bad_request(format!(
                "Invalid skip token '{s}' for this request."
            ))),
        }
    }
}
