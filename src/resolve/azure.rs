//! IMD v5: the user is resolved through the organization's Entra ID (Azure AD) app registration
//! with Microsoft Graph. The network phase finds the signed-in user by UPN (or email), with its
//! transitive group ids; look-ups are cached briefly per organization (`[azure]
//! lookup_cache_secs`; disabled users and errors are never cached as success) and concurrent
//! look-ups of one user share one round trip, so a building of laptops activating at 9:00 costs
//! one Graph user read per new user (and one membership read, made alongside it). The first Azure AD mapping by priority whose group
//! (transitive) or attribute matches decides profile, storage region and quota; users are keyed
//! by the Entra object id, and a hybrid user's `onPremisesImmutableId` (its AD objectGUID) finds
//! the user an earlier v2 activation created.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use futures_util::future::BoxFuture;
use tokio::time::Instant;

use super::coalesce::Coalescer;
use super::ttl::TtlMap;
use super::{
    Assignment, DirectoryUser, LookupContext, Prepared, Resolution, ResolveContext, ResolveError,
    Resolver,
};
use crate::directory::graph::{
    GraphClient, GraphClients, GraphClientsError, GraphError, GraphUser, is_guid,
};
use crate::domain::directory::DirectoryAttrs;
use crate::domain::{Email, normalize_email};
use crate::store::{AzureConfigRow, AzureMappingRow, OrgRow, Store, WriteTx};

pub const SOURCE: &str = "azure";

/// A user as Graph reports it, with its transitive group ids.
#[derive(Debug, Clone)]
pub struct Found {
    pub user: GraphUser,
    pub groups: Vec<String>,
}

type LookupResult = Result<Option<Arc<Found>>, GraphError>;
/// The organization's Graph client with the configuration row it was built from; `None`: not
/// configured.
type Client = Option<(Arc<GraphClient>, AzureConfigRow)>;
type Mappings = Arc<Vec<AzureMappingRow>>;

pub struct AzureResolver {
    clients: Arc<GraphClients>,
    store: Store,
    timeout: Duration,
    /// User look-ups (`lookup_cache_secs`; a zero TTL keeps nothing).
    cache: Arc<TtlMap<String, Arc<Found>>>,
    lookups: Coalescer<LookupResult>,
    mappings: TtlMap<String, Mappings>,
    /// The client and configuration, kept as briefly as the mappings: two database reads per
    /// activation less. An admin change on this replica drops it at once (`changed`).
    clients_cache: TtlMap<String, Client>,
}

/// How long mappings and the configuration are reused; a change made on another replica shows
/// up within this.
const MAPPINGS_TTL: Duration = Duration::from_secs(2);
const CACHE_MAX: usize = 100_000;

/// The attributes a mapping may compare, as Graph names them.
pub const MAPPABLE_ATTRIBUTES: &[&str] = &[
    "department",
    "country",
    "companyName",
    "jobTitle",
    "officeLocation",
    "employeeType",
];

impl AzureResolver {
    pub fn new(
        clients: Arc<GraphClients>,
        store: Store,
        timeout: Duration,
        cache_ttl: Duration,
    ) -> AzureResolver {
        AzureResolver {
            clients,
            store,
            timeout,
            cache: Arc::new(TtlMap::new(cache_ttl, CACHE_MAX)),
            lookups: Coalescer::default(),
            mappings: TtlMap::new(MAPPINGS_TTL, CACHE_MAX),
            clients_cache: TtlMap::new(MAPPINGS_TTL, CACHE_MAX),
        }
    }

    /// After an admin changed the organization's Azure settings or mappings on this replica.
    pub fn changed(&self, org_id: &str) {
        self.mappings.remove(org_id);
        self.clients_cache.remove(org_id);
        let prefix = format!("{org_id}\u{1}");
        self.cache.retain(|k| !k.starts_with(&prefix));
    }

    async fn mappings(&self, org_id: &str) -> Result<Arc<Vec<AzureMappingRow>>, ResolveError> {
        if let Some(m) = self.mappings.get(org_id) {
            return Ok(m);
        }
        let m = Arc::new(self.store.azure_mappings(org_id).await?);
        self.mappings.insert(org_id.to_string(), m.clone());
        Ok(m)
    }

    async fn client(&self, org_id: &str) -> Result<Client, ResolveError> {
        if let Some(c) = self.clients_cache.get(org_id) {
            return Ok(c);
        }
        let c = match self.clients.get_with_config(org_id).await {
            Ok(c) => c,
            Err(GraphClientsError::Store(e)) => return Err(e.into()),
            Err(e) => return Err(ResolveError::Directory(e.to_string())),
        };
        self.clients_cache.insert(org_id.to_string(), c.clone());
        Ok(c)
    }

    /// The user and its groups: from the cache, or one shared Graph round trip.
    async fn find(
        &self,
        org: &OrgRow,
        client: Option<Arc<GraphClient>>,
        key: &str,
        is_upn: bool,
        extensions: Vec<String>,
        deadline: Instant,
    ) -> Result<Option<Arc<Found>>, ResolveError> {
        let cache_key = format!("{}\u{1}{}", org.id, normalize_email(key));
        if let Some(f) = self.cache.get(&cache_key) {
            return Ok(Some(f));
        }
        let client = client.ok_or_else(|| {
            ResolveError::Directory(
                "Azure AD is not configured for this organization: PUT /api/v1/admin/azure".into(),
            )
        })?;
        let key2 = key.to_string();
        let cache = self.cache.clone();
        let by_mail = !is_upn;
        let found = self
            .lookups
            .run(cache_key.clone(), deadline, move || {
                Box::pin(async move {
                    // The groups are read by UPN alongside the user (Graph keys both by id or
                    // UPN): one round trip's wait instead of two. Keys the user read does not
                    // put plainly in the path (an apostrophe: `$filter`; a leading `$`:
                    // `users('…')`) wait for the user's id instead, as before.
                    let k = key2.trim();
                    let by_key =
                        !k.is_empty() && (is_guid(k) || !(k.contains('\'') || k.starts_with('$')));
                    let (user, groups) = if by_key {
                        let (u, g) = tokio::join!(
                            client.user(&key2, &extensions, deadline),
                            client.transitive_group_ids(k, deadline)
                        );
                        (u?, Some(g))
                    } else {
                        (client.user(&key2, &extensions, deadline).await?, None)
                    };
                    // Reported as an email that is not the UPN: look for the mail instead, and
                    // read the groups by the id found.
                    let (user, groups) = match user {
                        None if by_mail => (
                            client.user_by_mail(&key2, &extensions, deadline).await?,
                            None,
                        ),
                        u => (u, groups),
                    };
                    let Some(user) = user else {
                        return Ok(None);
                    };
                    // A disabled user's groups are not needed (nor their errors): it is
                    // refused either way.
                    let groups = match groups {
                        _ if !user.account_enabled => Vec::new(),
                        Some(g) => g?,
                        None => client.transitive_group_ids(&user.id, deadline).await?,
                    };
                    let found = Arc::new(Found { user, groups });
                    // Cached before the shared answer is handed out, so no caller arriving
                    // between the two asks Graph again. Disabled users are not cached.
                    if found.user.account_enabled {
                        cache.insert(cache_key, found.clone());
                    }
                    Ok(Some(found))
                })
            })
            .await
            .map_err(graph_error)?;
        Ok(found)
    }

    /// During an outage, with `directory_outage = "allow_known_users"`: the stored user.
    async fn known_user(
        &self,
        org: &OrgRow,
        key: &str,
    ) -> Result<Option<DirectoryUser>, ResolveError> {
        let u = self.store.user_by_upn(&org.id, SOURCE, key).await?;
        Ok(super::stored_directory_user(u))
    }
}

fn graph_error(e: GraphError) -> ResolveError {
    match e {
        GraphError::Unavailable(m) => ResolveError::Unavailable(m),
        other => ResolveError::Directory(other.to_string()),
    }
}

/// The AD objectGUID a hybrid user's `onPremisesImmutableId` carries (base64 of the 16 GUID
/// bytes in AD's wire order), as the canonical string v2 stores.
pub fn immutable_id_guid(immutable_id: &str) -> Option<String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(immutable_id.trim())
        .ok()?;
    let b: [u8; 16] = bytes.try_into().ok()?;
    Some(uuid::Uuid::from_bytes_le(b).to_string())
}

/// The directory-extension attributes the mappings compare: Graph returns them only when
/// selected by name.
pub fn extension_attributes(mappings: &[AzureMappingRow]) -> Vec<String> {
    mappings
        .iter()
        .filter_map(|m| m.attribute.clone())
        .filter(|a| a.starts_with("extension_"))
        .collect()
}

fn attribute<'a>(u: &'a GraphUser, name: &str) -> Option<&'a str> {
    match name {
        "department" => u.department.as_deref(),
        "country" => u.country.as_deref(),
        "companyName" => u.company_name.as_deref(),
        "jobTitle" => u.job_title.as_deref(),
        "officeLocation" => u.office_location.as_deref(),
        "employeeType" => u.employee_type.as_deref(),
        ext => u.extensions.get(ext).map(String::as_str),
    }
}

/// The first mapping by priority the user falls under, or why not.
pub fn decide(
    f: &Found,
    mappings: &[AzureMappingRow],
    allow_guests: bool,
) -> Result<DirectoryUser, ResolveError> {
    let u = &f.user;
    if !u.account_enabled {
        return Err(ResolveError::UserDisabled(format!(
            "{} is disabled in Entra ID (accountEnabled = false)",
            u.user_principal_name
        )));
    }
    if u.user_type
        .as_deref()
        .is_some_and(|t| t.eq_ignore_ascii_case("guest"))
        && !allow_guests
    {
        return Err(ResolveError::UserNotMapped(format!(
            "{} is a guest (userType = Guest); guests activate only with allow_guests = true on PUT /api/v1/admin/azure",
            u.user_principal_name
        )));
    }
    if mappings.is_empty() {
        return Err(ResolveError::UserNotMapped(
            "no Azure AD mappings are configured: create one with POST /api/v1/admin/azure-mappings".into(),
        ));
    }
    let winner = mappings.iter().find(|m| match m.source_kind.as_str() {
        "group" => m
            .group_id
            .as_deref()
            .is_some_and(|g| f.groups.iter().any(|x| x.eq_ignore_ascii_case(g))),
        _ => match (m.attribute.as_deref(), m.value.as_deref()) {
            (Some(a), Some(v)) => {
                attribute(u, a).is_some_and(|x| x.trim().eq_ignore_ascii_case(v.trim()))
            }
            _ => false,
        },
    });
    let Some(m) = winner else {
        let names: Vec<String> = mappings
            .iter()
            .take(5)
            .map(|m| format!("\"{}\"", m.name))
            .collect();
        return Err(ResolveError::UserNotMapped(format!(
            "{} is in none of the mappings' groups and matches none of their attributes (checked {}); add the user to a mapped group or adjust a mapping",
            u.user_principal_name,
            names.join(", ")
        )));
    };
    // No mail: the UPN is the email.
    let email_src = u.mail.as_deref().unwrap_or(&u.user_principal_name);
    let email = Email::parse(email_src).map_err(|e| {
        ResolveError::UserNotMapped(format!("the user's mail/UPN is not a valid email ({e})"))
    })?;
    Ok(DirectoryUser {
        external_id: u.id.to_ascii_lowercase(),
        email,
        user_name: u.user_principal_name.clone(),
        enabled: true,
        attrs: Some(DirectoryAttrs {
            display_name: u.display_name.clone(),
            login: None,
            upn: Some(u.user_principal_name.clone()),
            dn: None,
            department: u.department.clone(),
            country: u.country.clone(),
            groups: f.groups.clone(),
        }),
        assignment: Some(Assignment {
            mapping_id: m.id.clone(),
            profile: m.profile.clone(),
            storage_region: m.storage_region.clone(),
            quota_bytes: m.quota_bytes,
        }),
        note: None,
        also_known_as: u
            .on_premises_immutable_id
            .as_deref()
            .and_then(immutable_id_guid)
            .map(|g| (super::ldap::SOURCE, g)),
    })
}

impl Resolver for AzureResolver {
    fn name(&self) -> &'static str {
        "azure"
    }

    fn network_phase(&self) -> bool {
        true
    }

    fn timeout(&self) -> Option<Duration> {
        Some(self.timeout)
    }

    fn lookup<'a>(
        &'a self,
        ctx: &'a LookupContext<'a>,
    ) -> BoxFuture<'a, Result<Prepared, ResolveError>> {
        Box::pin(async move {
            let u = &ctx.request.user;
            let is_upn = u.upn.is_some();
            let key = u
                .upn
                .as_deref()
                .or(u.email.as_deref())
                .ok_or_else(|| {
                    ResolveError::InvalidRequest(
                        "user.upn (or user.email) is required for IMD v5".into(),
                    )
                })?
                .to_string();
            let client = self.client(&ctx.org.id).await?;
            let allow_guests = client.as_ref().is_some_and(|(_, c)| c.allow_guests);
            let client = client.map(|(c, _)| c);
            let mappings = self.mappings(&ctx.org.id).await?;
            let extensions = extension_attributes(&mappings);
            // Keep part of the budget for the outage fall-back.
            let budget = ctx.deadline.saturating_duration_since(Instant::now());
            let deadline = ctx.deadline - (budget / 5).min(Duration::from_millis(500));
            match self
                .find(ctx.org, client, &key, is_upn, extensions, deadline)
                .await
            {
                Ok(Some(f)) => match decide(&f, &mappings, allow_guests) {
                    Ok(u) => Ok(Prepared::User(u)),
                    Err(e @ ResolveError::UserDisabled(_)) => {
                        Err(
                            super::refuse_disabled(&self.store, &ctx.org.id, SOURCE, &f.user.id, e)
                                .await,
                        )
                    }
                    Err(e) => Err(e),
                },
                Ok(None) => Err(ResolveError::UserNotFound(format!(
                    "no user {key} in Entra ID; check the UPN the client reports"
                ))),
                Err(ResolveError::Unavailable(why))
                    if ctx.org.directory_outage == "allow_known_users" =>
                {
                    match self.known_user(ctx.org, &key).await? {
                        Some(u) => Ok(Prepared::User(u)),
                        None => Err(ResolveError::Unavailable(why)),
                    }
                }
                Err(e) => Err(e),
            }
        })
    }

    fn resolve<'a>(
        &'a self,
        _tx: &'a mut dyn WriteTx,
        ctx: &'a ResolveContext<'a>,
        prepared: &'a Prepared,
    ) -> BoxFuture<'a, Result<Resolution, ResolveError>> {
        Box::pin(async move { super::bind_prepared(ctx.org, prepared, SOURCE) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn immutable_id_is_the_objectguid_in_ad_byte_order() {
        // Wire bytes 49dd96e0 629a 2445 932d 5b7ef3171d6b (active-directory.md's lab example).
        let wire: [u8; 16] = [
            0x49, 0xdd, 0x96, 0xe0, 0x62, 0x9a, 0x24, 0x45, 0x93, 0x2d, 0x5b, 0x7e, 0xf3, 0x17,
            0x1d, 0x6b,
        ];
        let b64 = base64::engine::general_purpose::STANDARD.encode(wire);
        assert_eq!(
            immutable_id_guid(&b64).as_deref(),
            Some("e096dd49-9a62-4524-932d-5b7ef3171d6b")
        );
        assert_eq!(immutable_id_guid("not base64!"), None);
        assert_eq!(immutable_id_guid("AAAA"), None);
    }
}
