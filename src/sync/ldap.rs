//! The AD/LDAP side of a run: every mapping, in priority order, paged through a connector
//! (`SearchUsers` under the mapping's OU or base DN with its filter). A user's mapping is the
//! first one whose conditions it meets, exactly as at activation; a page's cursor is pinned to
//! the connector that issued it, so a connector lost mid-run fails the run (and the run then
//! preserves and deletes nobody).

use crate::connector::proto::{OpResult, Operation};
use crate::domain::ldap::Dn;
use crate::resolve::ResolveError;
use crate::resolve::ldap::{finish, gaps};
use crate::store::LdapMappingRow;

use super::plan::{Planner, Seen};
use super::{Run, SyncService};

pub(super) async fn pass(
    svc: &SyncService,
    run: &mut Run,
    planner: &mut Planner,
    mappings: &[LdapMappingRow],
) -> Result<(), String> {
    for m in mappings {
        let base = m.ou.clone().unwrap_or_else(|| m.base_dn.clone());
        let mut cursor: Option<String> = None;
        let mut connector: Option<String> = None;
        loop {
            svc.check_lease(run)?;
            let op = Operation::SearchUsers {
                base: Some(base.clone()),
                filter: m.filter.clone(),
                page_size: svc.cfg.page_size as u32,
                cursor: cursor.clone(),
            };
            let (result, via) = svc
                .hub
                .call_via(&run.org_id, connector.as_deref(), op, svc.page_deadline())
                .await
                .map_err(|e| format!("mapping \"{}\": {e}", m.name))?;
            let OpResult::Users { items, next_cursor } = result else {
                return Err(format!(
                    "mapping \"{}\": unexpected answer from the connector",
                    m.name
                ));
            };
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
                let groups: Vec<Dn> = u.groups.iter().filter_map(|g| Dn::parse(g).ok()).collect();
                // The search applied the mapping's filter: every entry matches it.
                let (_, missing) = gaps(Dn::parse(&u.dn).ok().as_ref(), &groups, m, true);
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
            match next_cursor {
                Some(c) => {
                    cursor = Some(c);
                    connector = Some(via);
                }
                None => break,
            }
        }
    }
    Ok(())
}
