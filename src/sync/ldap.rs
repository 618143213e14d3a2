//! The AD/LDAP side of a run: every mapping, in priority order, paged through a connector
//! (`SearchUsers` under the mapping's OU or base DN with its filter). A user's mapping is the
//! first one whose conditions it meets, exactly as at activation; a page's cursor is pinned to
//! the connector that issued it, so a connector lost mid-run fails the run (and the run then
//! preserves and deletes nobody).
//!
//! Cost: the next page is asked for while the current one is processed, and the first pages
//! arrive while the stored users are still being read (a bounded number of them are held), so
//! the connector, the directory and imd work at the same time. A user whose directory entry
//! matches what imd stores is recognised without building anything.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::connector::proto::{DirUser, OpResult, Operation};
use crate::directory::Hub;
use crate::directory::hub::CallError;
use crate::domain::ldap::Dn;
use crate::resolve::ResolveError;
use crate::resolve::ldap::{Scope, finish};
use crate::store::{
    LdapMappingRow, StoreError, SyncSettingsRow, SyncStoredUser, UserStatus, groups_digest,
    groups_json,
};

use super::plan::{Planner, Seen};
use super::{Run, SyncService};

type Page = Result<(OpResult, String), CallError>;
type Loading = JoinHandle<(Result<Vec<SyncStoredUser>, StoreError>, u64)>;

/// Pages held while the stored users are still being read (500 users each by default).
const EARLY_PAGES: usize = 40;

/// A page request under way; aborted if the run stops before reading it.
struct Pending(JoinHandle<Page>);

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn ask(
    hub: &Arc<Hub>,
    org_id: &str,
    prefer: Option<String>,
    op: Operation,
    deadline: tokio::time::Instant,
) -> Pending {
    let (hub, org) = (hub.clone(), org_id.to_string());
    Pending(tokio::spawn(async move {
        hub.call_via(&org, prefer.as_deref(), op, deadline).await
    }))
}

/// The stored users: being read, or in the planner.
enum Stored {
    Loading(Loading, SyncSettingsRow),
    Ready(Box<Planner>),
}

impl Stored {
    async fn ready(&mut self) -> Result<&mut Planner, String> {
        if let Stored::Loading(load, settings) = self {
            let (users, ms) = load.await.map_err(|e| e.to_string())?;
            let mut p = Planner::new(
                crate::resolve::ldap::SOURCE,
                settings.clone(),
                users.map_err(|e| e.to_string())?,
            );
            p.load_ms = ms;
            *self = Stored::Ready(Box::new(p));
        }
        match self {
            Stored::Ready(p) => Ok(p),
            Stored::Loading(..) => unreachable!("loaded above"),
        }
    }

    fn is_loading(&self) -> bool {
        matches!(self, Stored::Loading(l, _) if !l.is_finished())
    }
}

/// Reads the stored AD/LDAP users in the background and pages every mapping: the planner with
/// what the pass saw, and how the pass ended.
pub(super) async fn pass(
    svc: &SyncService,
    run: &mut Run,
    settings: SyncSettingsRow,
    mappings: &[LdapMappingRow],
) -> (Result<Planner, String>, Result<(), String>) {
    let load: Loading = {
        let (store, org) = (svc.store.clone(), run.org_id.clone());
        tokio::spawn(async move {
            let t = std::time::Instant::now();
            let users = store
                .directory_users(&org, crate::resolve::ldap::SOURCE)
                .await;
            (users, t.elapsed().as_millis() as u64)
        })
    };
    let mut stored = Stored::Loading(load, settings);
    let r = pages(svc, run, &mut stored, mappings).await;
    match stored.ready().await {
        Ok(_) => {}
        Err(e) => return (Err(e.clone()), Err(e)),
    }
    let Stored::Ready(p) = stored else {
        unreachable!("ready above")
    };
    (Ok(*p), r)
}

async fn pages(
    svc: &SyncService,
    run: &mut Run,
    stored: &mut Stored,
    mappings: &[LdapMappingRow],
) -> Result<(), String> {
    let mut norm: HashMap<String, Option<String>> = HashMap::new();
    let mut early: VecDeque<Vec<DirUser>> = VecDeque::new();
    for m in mappings {
        let scope = Scope::of(m);
        let base = m.ou.clone().unwrap_or_else(|| m.base_dn.clone());
        let search = |cursor: Option<String>| Operation::SearchUsers {
            base: Some(base.clone()),
            filter: m.filter.clone(),
            page_size: svc.cfg.page_size as u32,
            cursor,
        };
        let mut pending = Some(ask(
            &svc.hub,
            &run.org_id,
            None,
            search(None),
            svc.page_deadline(),
        ));
        while let Some(mut p) = pending.take() {
            svc.check_lease(run)?;
            let answer = (&mut p.0)
                .await
                .map_err(|e| format!("mapping \"{}\": {e}", m.name))?;
            let (result, via) = answer.map_err(|e| format!("mapping \"{}\": {e}", m.name))?;
            let OpResult::Users { items, next_cursor } = result else {
                return Err(format!(
                    "mapping \"{}\": unexpected answer from the connector",
                    m.name
                ));
            };
            if let Some(c) = next_cursor {
                pending = Some(ask(
                    &svc.hub,
                    &run.org_id,
                    Some(via),
                    search(Some(c)),
                    svc.page_deadline(),
                ));
            }
            if stored.is_loading() && early.len() < EARLY_PAGES {
                early.push_back(items);
                continue;
            }
            let planner = stored.ready().await?;
            while let Some(held) = early.pop_front() {
                page(svc, run, planner, &scope, m, held, &mut norm).await?;
            }
            page(svc, run, planner, &scope, m, items, &mut norm).await?;
        }
        // Pages held for this mapping are processed before the next mapping's (priority order).
        if !early.is_empty() {
            let planner = stored.ready().await?;
            while let Some(held) = early.pop_front() {
                page(svc, run, planner, &scope, m, held, &mut norm).await?;
            }
        }
    }
    Ok(())
}

async fn page(
    svc: &SyncService,
    run: &mut Run,
    planner: &mut Planner,
    scope: &Scope<'_>,
    m: &LdapMappingRow,
    items: Vec<DirUser>,
    norm: &mut HashMap<String, Option<String>>,
) -> Result<(), String> {
    for u in items {
        let ext = u.id.to_ascii_lowercase();
        if planner.is_mapped(&ext) {
            continue;
        }
        if !u.enabled {
            planner.observe(Seen::Disabled {
                external_id: ext,
                reason: "disabled in the directory".into(),
            });
            continue;
        }
        let groups: Vec<String> = u
            .groups
            .iter()
            .filter_map(|g| {
                norm.entry(g.clone())
                    .or_insert_with(|| Dn::parse(g).ok().map(|d| d.normalized()))
                    .clone()
            })
            .collect();
        // The search applied the mapping's filter: every entry matches it.
        let (_, missing) = scope.gaps(Dn::parse(&u.dn).ok().as_ref(), &groups, true);
        if !missing.is_empty() {
            planner.saw(&ext);
            continue;
        }
        if planner.stored(&ext).is_some_and(|s| unchanged(s, &u, m)) {
            planner.unchanged(ext);
            continue;
        }
        let seen = match finish(&u, m) {
            Ok(d) => Seen::Mapped {
                user: Box::new(d.user),
                auto_import: m.auto_import,
            },
            Err(e) => Seen::Invalid {
                external_id: ext,
                name: u
                    .name
                    .clone()
                    .or_else(|| u.login.clone())
                    .unwrap_or_else(|| u.dn.clone()),
                reason: match e {
                    ResolveError::UserNotMapped(m) => m,
                    other => other.to_string(),
                },
                auto_import: m.auto_import,
            },
        };
        for p in planner.observe(seen) {
            svc.queue(run, p).await.map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// Whether an active user under the same mapping is stored exactly as the directory reports
/// it now (what `finish` and the planner would write, compared field by field), so there is
/// nothing to decide. Anything else takes the full path, which is always right.
fn unchanged(s: &SyncStoredUser, u: &DirUser, m: &LdapMappingRow) -> bool {
    if s.status() != UserStatus::Active || s.mapping_id.as_deref() != Some(m.id.as_str()) {
        return false;
    }
    let email = match (&u.email, &u.upn) {
        (Some(e), _) => e.trim(),
        (None, Some(upn)) if m.email_fallback == "upn" => upn.trim(),
        _ => return false,
    };
    let user_name = u.login.as_deref().or(u.upn.as_deref()).unwrap_or(email);
    s.email == email
        && s.user_name == user_name
        && s.display_name == u.name
        && s.login == u.login
        && s.upn == u.upn
        && s.dn.as_deref() == Some(u.dn.as_str())
        && s.department == u.department
        && s.country == u.country
        && s.groups_digest == groups_digest(Some(&groups_json(&u.groups)))
}
