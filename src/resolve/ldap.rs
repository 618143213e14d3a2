//! IMD v2: the user is resolved through the organization's AD/LDAP connector. The network
//! phase asks a connected connector for the signed-in user (concurrent look-ups of one user
//! share one round trip), checks that it exists, is enabled, has an email (or the winning
//! mapping falls back to its UPN) and falls under an AD/LDAP mapping — the first in priority
//! order whose base DN, OU, group (nested membership counts) and filter all match — and hands
//! the user with the mapping's profile, storage region and quota to the transaction. With no
//! connector answering, an organization set to `allow_known_users` may activate a user imd
//! already stored from the directory; otherwise nothing is written.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use tokio::time::Instant;

use super::{
    DirectoryUser, LookupContext, Prepared, Resolution, ResolveContext, ResolveError, Resolver,
};
use crate::connector::proto::{DirUser, OpErrorCode, OpResult, Operation, PasswordVerdict};
use crate::directory::{CallError, Hub};
use crate::domain::directory::DirectoryAttrs;
use crate::domain::ldap::Dn;
use crate::domain::request::login_key;
use crate::domain::{Email, normalize_email};
use crate::store::{LdapMappingRow, OrgRow, Store, WriteTx};

pub const SOURCE: &str = "ldap";

/// The signed-in user as the client names it: a login (optionally `DOMAIN\login`) with an
/// optional domain, or a UPN.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LoginName {
    pub login: Option<String>,
    pub domain: Option<String>,
    pub upn: Option<String>,
}

const MAX_NAME: usize = 256;

impl LoginName {
    pub fn parse(
        login: Option<&str>,
        domain: Option<&str>,
        upn: Option<&str>,
    ) -> Result<LoginName, String> {
        let clean = |what: &str, v: Option<&str>| -> Result<Option<String>, String> {
            let Some(v) = v.map(str::trim).filter(|v| !v.is_empty()) else {
                return Ok(None);
            };
            if v.chars().count() > MAX_NAME {
                return Err(format!("{what} is longer than {MAX_NAME} characters"));
            }
            if v.chars().any(char::is_control) {
                return Err(format!("{what} contains control characters"));
            }
            Ok(Some(v.to_string()))
        };
        let mut login = clean("login", login)?;
        let mut domain = clean("domain", domain)?;
        let mut upn = clean("upn", upn)?;
        // `CORP\jdoe` carries its domain; `jdoe@corp.example.com` in the login field is a UPN.
        if let Some(l) = login.clone() {
            if let Some((d, l)) = l.split_once('\\') {
                if d.is_empty() || l.is_empty() || l.contains('\\') {
                    return Err("login: expected DOMAIN\\name".into());
                }
                if domain.is_none() {
                    domain = Some(d.to_string());
                }
                login = Some(l.to_string());
            } else if l.contains('@') && upn.is_none() {
                upn = Some(l);
                login = None;
            }
        }
        if login.is_none() && upn.is_none() {
            return Err("user.login (with user.domain) or user.upn is required for IMD v2".into());
        }
        Ok(LoginName { login, domain, upn })
    }

    /// The look-up key of concurrent requests for the same user (case-insensitive).
    fn key(&self) -> String {
        let n = |v: &Option<String>| {
            v.as_deref()
                .map(|s| normalize_email(s).into_owned())
                .unwrap_or_default()
        };
        format!(
            "{}\u{1}{}\u{1}{}",
            n(&self.login),
            n(&self.domain),
            n(&self.upn)
        )
    }

    pub fn display(&self) -> String {
        match (&self.domain, &self.login, &self.upn) {
            (Some(d), Some(l), _) => format!("{d}\\{l}"),
            (None, Some(l), _) => l.clone(),
            (_, None, Some(u)) => u.clone(),
            _ => String::new(),
        }
    }
}

pub use super::coalesce::Coalescer;
use super::ttl::TtlMap;

pub struct LdapResolver {
    hub: Arc<Hub>,
    store: Store,
    lookups: Coalescer<Result<OpResult, CallError>>,
    /// Each organization's mappings, read at most once per `MAPPINGS_TTL` (every v2 activation
    /// needs them). Changes made through this replica invalidate at once; other replicas see
    /// them within the TTL.
    mappings: TtlMap<String, Arc<Vec<LdapMappingRow>>>,
}

pub const MAPPINGS_TTL: std::time::Duration = std::time::Duration::from_secs(2);

/// The outcome of checking a directory user against the mappings.
#[derive(Debug, Clone)]
pub struct Decision {
    pub user: DirectoryUser,
    pub mapping_name: String,
}

impl LdapResolver {
    pub fn new(hub: Arc<Hub>, store: Store) -> LdapResolver {
        LdapResolver {
            hub,
            store,
            lookups: Coalescer::default(),
            mappings: TtlMap::new(MAPPINGS_TTL, 100_000),
        }
    }

    /// The organization's mappings by priority (cached, see `MAPPINGS_TTL`).
    async fn mappings(&self, org_id: &str) -> Result<Arc<Vec<LdapMappingRow>>, ResolveError> {
        if let Some(m) = self.mappings.get(org_id) {
            return Ok(m);
        }
        let m = Arc::new(self.store.ldap_mappings(org_id).await?);
        self.mappings.insert(org_id.to_string(), m.clone());
        Ok(m)
    }

    /// After an admin changed the organization's mappings on this replica.
    pub fn mappings_changed(&self, org_id: &str) {
        self.mappings.remove(org_id);
    }

    /// One round trip per user however many activations ask at once: the first asks, the
    /// others wait for the same answer.
    async fn lookup_user(
        &self,
        org_id: &str,
        name: &LoginName,
        filters: Vec<String>,
        deadline: Instant,
    ) -> Result<OpResult, CallError> {
        let key = format!("{org_id}\u{2}{}\u{2}{}", name.key(), filters.join("\u{3}"));
        let hub = self.hub.clone();
        let op = Operation::LookupUser {
            login: name.login.clone(),
            domain: name.domain.clone(),
            upn: name.upn.clone(),
            filters,
        };
        let org = org_id.to_string();
        self.lookups
            .run(key, deadline, move || {
                Box::pin(async move { hub.call(&org, op, deadline).await })
            })
            .await
    }

    /// Finds the user in the directory and decides its mapping (the network phase of v2
    /// activations, and of password activations after the bind).
    pub async fn find(
        &self,
        org: &OrgRow,
        name: &LoginName,
        deadline: Instant,
    ) -> Result<Decision, ResolveError> {
        let mappings = self.mappings(&org.id).await?;
        if mappings.is_empty() {
            return Err(ResolveError::UserNotMapped(
                "no AD/LDAP mappings are configured: create one with POST /api/v1/admin/ldap-mappings".into(),
            ));
        }
        let (filters, index) = filter_list(&mappings);
        let found = self.lookup_user(&org.id, name, filters, deadline).await;
        let user = match found {
            Ok(OpResult::User { user: Some(u) }) => u,
            Ok(OpResult::User { user: None }) => {
                return Err(ResolveError::UserNotFound(format!(
                    "no user {} in the directory (looked up by {}); check the login, the domain and the connector's base_dn",
                    name.display(),
                    if name.login.is_some() { "login" } else { "UPN" }
                )));
            }
            Ok(_) => {
                return Err(ResolveError::Directory(
                    "unexpected answer from the connector".into(),
                ));
            }
            Err(e) => return Err(call_error(e)),
        };
        match decide(&user, &mappings, &index) {
            Err(e @ ResolveError::UserDisabled(_)) => {
                Err(super::refuse_disabled(&self.store, &org.id, SOURCE, &user.id, e).await)
            }
            other => other,
        }
    }

    /// Binds as the user through the connector, then decides its mapping.
    pub async fn verify_password(
        &self,
        org: &OrgRow,
        name: &LoginName,
        password: &str,
        deadline: Instant,
    ) -> Result<Decision, ResolveError> {
        // An empty password would be an "unauthenticated bind", which some directories accept.
        if password.is_empty() {
            return Err(ResolveError::InvalidCredentials);
        }
        let mappings = self.mappings(&org.id).await?;
        let (filters, index) = filter_list(&mappings);
        let op = Operation::VerifyPassword {
            login: name.login.clone(),
            domain: name.domain.clone(),
            upn: name.upn.clone(),
            password: password.to_string(),
            filters,
        };
        let check = match self.hub.call(&org.id, op, deadline).await {
            Ok(OpResult::Password(c)) => c,
            Ok(_) => {
                return Err(ResolveError::Directory(
                    "unexpected answer from the connector".into(),
                ));
            }
            Err(e) => return Err(call_error(e)),
        };
        match check.verdict {
            PasswordVerdict::Valid => {}
            PasswordVerdict::Invalid => return Err(ResolveError::InvalidCredentials),
            PasswordVerdict::Disabled => {
                return Err(ResolveError::UserDisabled(
                    "this account is disabled in the directory".into(),
                ));
            }
            PasswordVerdict::Locked => {
                return Err(ResolveError::UserDisabled(
                    "this account is locked out in the directory".into(),
                ));
            }
            PasswordVerdict::Expired | PasswordVerdict::MustChange => {
                return Err(ResolveError::InvalidCredentials);
            }
        }
        let user = check
            .user
            .ok_or_else(|| ResolveError::Directory("the connector verified no user".into()))?;
        if mappings.is_empty() {
            return Err(ResolveError::UserNotMapped(
                "no AD/LDAP mappings are configured: create one with POST /api/v1/admin/ldap-mappings".into(),
            ));
        }
        decide(&user, &mappings, &index)
    }

    /// During a directory outage, with `directory_outage = "allow_known_users"`: the user as
    /// stored at an earlier activation or sync.
    async fn known_user(
        &self,
        org: &OrgRow,
        name: &LoginName,
    ) -> Result<Option<DirectoryUser>, ResolveError> {
        let u = match (&name.login, &name.upn) {
            (Some(l), _) => {
                self.store
                    .user_by_login(&org.id, SOURCE, &login_key(l))
                    .await?
            }
            (None, Some(upn)) => self.store.user_by_upn(&org.id, SOURCE, upn).await?,
            _ => None,
        };
        Ok(super::stored_directory_user(u))
    }
}

/// The mappings' filters as sent to the connector, and for each mapping its index there.
fn filter_list(mappings: &[LdapMappingRow]) -> (Vec<String>, Vec<Option<usize>>) {
    let mut filters = Vec::new();
    let index = mappings
        .iter()
        .map(|m| {
            m.filter.as_ref().map(|f| {
                filters.push(f.clone());
                filters.len() - 1
            })
        })
        .collect();
    (filters, index)
}

fn call_error(e: CallError) -> ResolveError {
    match e {
        CallError::Unavailable(m) => ResolveError::ConnectorUnavailable(m),
        CallError::Directory(op) => match op.code {
            OpErrorCode::DirectoryUnavailable | OpErrorCode::Busy | OpErrorCode::Timeout => {
                ResolveError::ConnectorUnavailable(op.message)
            }
            _ => ResolveError::Directory(op.message),
        },
    }
}

fn dn_key(s: &str) -> Option<Dn> {
    Dn::parse(s).ok()
}

/// The first mapping (by priority) the user falls under, with the user as it will be stored;
/// otherwise why not, naming the closest mapping and what it lacked.
pub fn decide(
    user: &DirUser,
    mappings: &[LdapMappingRow],
    filter_index: &[Option<usize>],
) -> Result<Decision, ResolveError> {
    if !user.enabled {
        return Err(ResolveError::UserDisabled(format!(
            "{} is disabled in the directory",
            user.login.as_deref().unwrap_or(&user.dn)
        )));
    }
    let user_dn = dn_key(&user.dn);
    let groups: Vec<String> = user
        .groups
        .iter()
        .filter_map(|g| dn_key(g))
        .map(|d| d.normalized())
        .collect();
    let mut closest: Option<(usize, &LdapMappingRow, String)> = None;
    for (i, m) in mappings.iter().enumerate() {
        let filter_ok = filter_index
            .get(i)
            .copied()
            .flatten()
            .is_some_and(|k| user.matched_filters.contains(&k));
        let (passed, missing) = Scope::of(m).gaps(user_dn.as_ref(), &groups, filter_ok);
        if missing.is_empty() {
            return finish(user, m);
        }
        if closest.as_ref().is_none_or(|(p, _, _)| passed > *p) {
            closest = Some((passed, m, missing.join("; ")));
        }
    }
    let (_, m, why) = closest.expect("at least one mapping");
    Err(ResolveError::UserNotMapped(format!(
        "{} falls under no AD/LDAP mapping; closest is \"{}\" (priority {}): {why}",
        user.login.as_deref().unwrap_or(&user.dn),
        m.name,
        m.priority
    )))
}

/// A mapping's DNs, parsed once (a sync run checks every user against them).
pub struct Scope<'m> {
    pub mapping: &'m LdapMappingRow,
    base: Option<Dn>,
    ou: Option<Dn>,
    group: Option<String>,
}

impl<'m> Scope<'m> {
    pub fn of(m: &'m LdapMappingRow) -> Scope<'m> {
        Scope {
            mapping: m,
            base: dn_key(&m.base_dn),
            ou: m.ou.as_deref().and_then(dn_key),
            group: m
                .group_dn
                .as_deref()
                .and_then(dn_key)
                .map(|d| d.normalized()),
        }
    }

    /// How many of the mapping's conditions the user meets, and what it lacks (nothing: it
    /// falls under the mapping). `groups_norm`: the user's groups as `Dn::normalized` forms;
    /// `filter_ok`: the user matched the mapping's filter (ignored without one).
    pub fn gaps(
        &self,
        user_dn: Option<&Dn>,
        groups_norm: &[String],
        filter_ok: bool,
    ) -> (usize, Vec<String>) {
        let m = self.mapping;
        let mut passed = 0;
        let mut missing: Vec<String> = Vec::new();
        let within = |scope: &Option<Dn>| match (user_dn, scope) {
            (Some(u), Some(s)) => u.is_within(s),
            _ => false,
        };
        if within(&self.base) {
            passed += 1;
        } else {
            missing.push(format!("the user's DN is not under base DN {}", m.base_dn));
        }
        if let Some(ou) = &m.ou {
            if within(&self.ou) {
                passed += 1;
            } else {
                missing.push(format!("the user is not in OU {ou}"));
            }
        }
        if let Some(g) = &m.group_dn {
            if self
                .group
                .as_ref()
                .is_some_and(|w| groups_norm.iter().any(|x| x == w))
            {
                passed += 1;
            } else {
                missing.push(format!(
                    "the user is not a member (direct or nested) of {g}"
                ));
            }
        }
        if let Some(f) = &m.filter {
            if filter_ok {
                passed += 1;
            } else {
                missing.push(format!("the user does not match filter {f}"));
            }
        }
        (passed, missing)
    }
}

/// The user as `m` stores it (its email checked), for a user known to fall under `m`.
pub fn finish(user: &DirUser, m: &LdapMappingRow) -> Result<Decision, ResolveError> {
    let email = match (&user.email, &user.upn) {
        (Some(e), _) => Email::parse(e).map_err(|e| {
            ResolveError::UserNotMapped(format!(
                "the user's mail attribute is not a valid email ({e}); fix it in the directory"
            ))
        })?,
        (None, Some(upn)) if m.email_fallback == "upn" => Email::parse(upn).map_err(|e| {
            ResolveError::UserNotMapped(format!(
                "the user has no mail and its UPN is not a valid email ({e})"
            ))
        })?,
        _ => {
            return Err(ResolveError::UserNotMapped(format!(
                "{} matches mapping \"{}\" but has no mail attribute; set mail in the directory or set email_fallback = \"upn\" on the mapping",
                user.login.as_deref().unwrap_or(&user.dn),
                m.name
            )));
        }
    };
    let user_name = user
        .login
        .clone()
        .or_else(|| user.upn.clone())
        .unwrap_or_else(|| email.as_str().to_string());
    Ok(Decision {
        mapping_name: m.name.clone(),
        user: DirectoryUser {
            external_id: user.id.to_ascii_lowercase(),
            email,
            user_name,
            enabled: user.enabled,
            attrs: Some(DirectoryAttrs {
                display_name: user.name.clone(),
                login: user.login.clone(),
                upn: user.upn.clone(),
                dn: Some(user.dn.clone()),
                department: user.department.clone(),
                country: user.country.clone(),
                groups: user.groups.clone(),
            }),
            assignment: Some(super::Assignment {
                mapping_id: m.id.clone(),
                profile: m.profile.clone(),
                storage_region: m.storage_region.clone(),
                quota_bytes: m.quota_bytes,
            }),
            note: None,
            also_known_as: None,
        },
    })
}

impl Resolver for LdapResolver {
    fn name(&self) -> &'static str {
        "ldap"
    }

    fn network_phase(&self) -> bool {
        true
    }

    fn lookup<'a>(
        &'a self,
        ctx: &'a LookupContext<'a>,
    ) -> BoxFuture<'a, Result<Prepared, ResolveError>> {
        Box::pin(async move {
            let u = &ctx.request.user;
            let name = LoginName::parse(u.login.as_deref(), u.domain.as_deref(), u.upn.as_deref())
                .map_err(ResolveError::InvalidRequest)?;
            // Leave part of the pipeline's budget for the outage fall-back (a read of the stored
            // user): the connector's deadline ends a fifth (at most 500 ms) earlier.
            let budget = ctx.deadline.saturating_duration_since(Instant::now());
            let reserve = (budget / 5).min(std::time::Duration::from_millis(500));
            let deadline =
                (ctx.deadline - reserve).min(Instant::now() + self.hub.settings().request_timeout);
            match self.find(ctx.org, &name, deadline).await {
                Ok(d) => Ok(Prepared::User(d.user)),
                Err(ResolveError::ConnectorUnavailable(why))
                    if ctx.org.directory_outage == "allow_known_users" =>
                {
                    match self.known_user(ctx.org, &name).await? {
                        Some(u) => Ok(Prepared::User(u)),
                        None => Err(ResolveError::ConnectorUnavailable(format!(
                            "{why}; {} is not known to imd yet, so the outage setting cannot help",
                            name.display()
                        ))),
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
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_identical_lookups_share_one_round_trip() {
        let c: Arc<Coalescer<Result<OpResult, CallError>>> = Arc::new(Coalescer::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let mut tasks = Vec::new();
        for i in 0..20 {
            let (c, calls, gate) = (c.clone(), calls.clone(), gate.clone());
            // Two distinct users: 10 requests each.
            let key = format!("org\u{2}user{}", i % 2);
            tasks.push(tokio::spawn(async move {
                let deadline = Instant::now() + std::time::Duration::from_secs(5);
                c.run(key, deadline, move || {
                    Box::pin(async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        gate.notified().await;
                        Ok(OpResult::User { user: None })
                    })
                })
                .await
            }));
        }
        while c.in_flight() < 2 {
            tokio::task::yield_now().await;
        }
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        gate.notify_waiters();
        for t in tasks {
            assert!(matches!(
                t.await.unwrap(),
                Ok(OpResult::User { user: None })
            ));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2, "one round trip per user");
        assert_eq!(c.in_flight(), 0, "entries go once answered");
        // A later look-up asks again (no caching of answers).
        let again = c
            .run(
                "org\u{2}user0".into(),
                Instant::now() + std::time::Duration::from_secs(1),
                || Box::pin(async { Ok(OpResult::User { user: None }) }),
            )
            .await;
        assert!(again.is_ok());
    }

    #[test]
    fn login_forms_parse_into_login_domain_and_upn() {
        let n = LoginName::parse(Some("CORP\\jdoe"), None, None).unwrap();
        assert_eq!(
            (n.login.as_deref(), n.domain.as_deref()),
            (Some("jdoe"), Some("CORP"))
        );
        let n = LoginName::parse(Some("jdoe@corp.example.com"), None, None).unwrap();
        assert_eq!(n.upn.as_deref(), Some("jdoe@corp.example.com"));
        assert!(n.login.is_none());
        assert!(LoginName::parse(None, Some("CORP"), None).is_err());
        assert!(LoginName::parse(Some("a\u{0}b"), None, None).is_err());
        assert!(LoginName::parse(Some(&"x".repeat(300)), None, None).is_err());
        assert!(LoginName::parse(Some("\\jdoe"), None, None).is_err());
    }
}
