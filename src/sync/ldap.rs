//! The AD/LDAP side of a run: every mapping, in priority order, paged through a connector
//! (`SearchUsers` under the mapping's OU or base DN with its filter). A user's mapping is the
//! first one whose conditions it meets, exactly as at activation; a page's cursor is pinned to
//! the connector that issued it, so a connector lost mid-run fails the run (and the run then
//! preserves and deletes nobody). The next page is asked for while the current one is
//! processed, so the connector and imd work at the same time.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::connector::proto::{OpResult, Operation};
use crate::directory::Hub;
use crate::directory::hub::CallError;
use crate::domain::ldap::Dn;
use crate::resolve::ResolveError;
use crate::resolve::ldap::{Scope, finish};
use crate::store::LdapMappingRow;

use super::plan::{Planner, Seen};
use super::{Run, SyncService};

type Page = Result<(OpResult, String), CallError>;

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

pub(super) async fn pass(
    svc: &SyncService,
    run: &mut Run,
    planner: &mut Planner,
    mappings: &[LdapMappingRow],
) -> Result<(), String> {
    // Normalized group DNs, parsed once each (users share a few groups).
    let mut norm: HashMap<String, Option<String>> = HashMap::new();
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
        }
    }
    Ok(())
}
