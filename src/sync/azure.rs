//! The Entra ID side of a run. A full pass enumerates each mapping in priority order (a group
//! mapping's transitive user members, an attribute mapping's users by `$filter`), honouring
//! `accountEnabled`; it takes a "from now" delta link first, so changes made while it runs are
//! replayed by the next pass. Later passes read `/users/delta` from the stored link and re-check
//! each changed user against every mapping (`@removed` users count as disabled). An expired
//! link, changed mappings or a week since the last full pass make the pass full again.

use std::sync::Arc;

use crate::directory::graph::{GraphClient, GraphError, GraphUser, odata_string};
use crate::resolve::ResolveError;
use crate::resolve::azure::{Found, decide, extension_attributes as extensions};
use crate::store::{AzureConfigRow, AzureMappingRow, ProfileRow, Store, StoreError};

use super::plan::{Planner, Seen};
use super::{AZURE_FULL_EVERY_SECS, Run, SourceReport, SyncService};

/// What a complete pass leaves for the next one (stored only by runs that are not dry).
pub(super) struct Finish {
    delta_link: Option<String>,
    full: bool,
    mappings_hash: String,
}

impl Finish {
    pub(super) async fn store(
        &self,
        store: &Store,
        org_id: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        store
            .put_azure_sync_state(
                org_id,
                self.delta_link.as_deref(),
                self.full.then_some(now),
                &self.mappings_hash,
                now,
            )
            .await
    }
}

type PassError = (SourceReport, String);

/// What an Azure pass works with.
pub(super) struct Context<'a> {
    pub client: &'a Arc<GraphClient>,
    pub config: &'a AzureConfigRow,
    pub mappings: &'a [AzureMappingRow],
    pub profiles: &'a [ProfileRow],
    /// When retention is evaluated (the run's time, or a preview's `as_of`).
    pub at: i64,
}

fn report(mode: &'static str, reason: Option<String>) -> SourceReport {
    SourceReport {
        source: crate::resolve::azure::SOURCE,
        mode,
        reason,
        error: None,
        load_ms: 0,
        elapsed_ms: 0,
    }
}

/// A digest of what the mappings select: a change means the stored delta link no longer covers
/// the right users.
fn mappings_hash(mappings: &[AzureMappingRow], config: &AzureConfigRow) -> String {
    let mut s = format!("guests={}", config.allow_guests);
    for m in mappings {
        s.push_str(&format!(
            "|{}:{}:{}:{:?}:{:?}:{:?}:{}:{}:{:?}:{}",
            m.id,
            m.priority,
            m.source_kind,
            m.group_id,
            m.attribute,
            m.value,
            m.profile,
            m.storage_region,
            m.quota_bytes,
            m.auto_import
        ));
    }
    crate::crypto::sha256_hex(&s)
}

pub(super) async fn pass(
    svc: &SyncService,
    run: &mut Run,
    planner: &mut Planner,
    ctx: &Context<'_>,
) -> Result<(SourceReport, Finish), PassError> {
    let (config, mappings) = (ctx.config, ctx.mappings);
    let hash = mappings_hash(mappings, config);
    let ext = extensions(mappings);
    let state = svc
        .store
        .azure_sync_state(&run.org_id)
        .await
        .map_err(|e| (report("full", None), e.to_string()))?;
    let full_reason = match &state {
        None | Some((None, _, _)) => Some("first run: every mapped user is enumerated".to_string()),
        Some((_, _, h)) if h.as_deref() != Some(hash.as_str()) => {
            Some("the Azure AD mappings changed since the last full run".into())
        }
        Some((_, full_at, _)) if full_at.is_none_or(|t| run.now - t >= AZURE_FULL_EVERY_SECS) => {
            Some(
                "a week since the last full run (deltas do not report group membership changes)"
                    .into(),
            )
        }
        _ => None,
    };
    if full_reason.is_none()
        && let Some((Some(link), _, _)) = &state
    {
        match delta(svc, run, planner, ctx, link).await {
            Ok(next) => {
                return Ok((
                    report("delta", None),
                    Finish {
                        delta_link: Some(next),
                        full: false,
                        mappings_hash: hash,
                    },
                ));
            }
            Err(DeltaError::Expired(why)) => {
                let reason = format!("delta link expired ({why}): a full run instead");
                return full(svc, run, planner, ctx, &ext, hash, reason).await;
            }
            Err(DeltaError::Other(e)) => return Err((report("delta", None), e)),
        }
    }
    let reason = full_reason.unwrap_or_default();
    full(svc, run, planner, ctx, &ext, hash, reason).await
}

async fn full(
    svc: &SyncService,
    run: &mut Run,
    planner: &mut Planner,
    ctx: &Context<'_>,
    ext: &[String],
    hash: String,
    reason: String,
) -> Result<(SourceReport, Finish), PassError> {
    let (client, config, mappings) = (ctx.client, ctx.config, ctx.mappings);
    let rep = || report("full", Some(reason.clone()));
    // Taken first: whatever changes while the enumeration runs is replayed by the next delta.
    // A dry run takes none (it must not move the sync state).
    let delta_link = if run.opts.dry_run {
        None
    } else {
        Some(
            client
                .delta_latest(ext, svc.page_deadline())
                .await
                .map_err(|e| (rep(), e.to_string()))?,
        )
    };
    for m in mappings {
        let mut next: Option<String> = None;
        loop {
            svc.check_lease(run).map_err(|e| (rep(), e))?;
            let page = match m.source_kind.as_str() {
                "group" => {
                    let gid = m.group_id.as_deref().unwrap_or_default();
                    client
                        .group_members_page(gid, ext, next.as_deref(), svc.page_deadline())
                        .await
                }
                _ => {
                    let filter = format!(
                        "{} eq {}",
                        m.attribute.as_deref().unwrap_or_default(),
                        odata_string(m.value.as_deref().unwrap_or_default())
                    );
                    client
                        .users_page(Some(&filter), ext, next.as_deref(), svc.page_deadline())
                        .await
                }
            }
            .map_err(|e| (rep(), format!("mapping \"{}\": {e}", m.name)))?;
            for u in page.users {
                let id = u.id.to_ascii_lowercase();
                if planner.is_mapped(&id) {
                    continue;
                }
                let groups = m.group_id.iter().cloned().collect();
                let seen = judge(u, groups, std::slice::from_ref(m), config.allow_guests);
                for p in planner.observe(seen) {
                    svc.queue(run, p)
                        .await
                        .map_err(|e| (rep(), e.to_string()))?;
                }
            }
            match page.next_link {
                Some(l) => next = Some(l),
                None => break,
            }
        }
    }
    // Users imd has that no mapping returned: in a mapped group no more, or gone from Entra ID
    // (deleted while no delta link covered it). Graph is asked about each; a user it no longer
    // has, or reports disabled, counts as disabled.
    for id in planner.unseen() {
        svc.check_lease(run).map_err(|e| (rep(), e))?;
        match client.user(&id, ext, svc.page_deadline()).await {
            Ok(None) => {
                planner.observe(Seen::Disabled {
                    external_id: id,
                    reason: "no longer in Entra ID (deleted)".into(),
                });
            }
            Ok(Some(u)) if !u.account_enabled => {
                planner.observe(Seen::Disabled {
                    external_id: id,
                    reason: "disabled in Entra ID (accountEnabled = false)".into(),
                });
            }
            Ok(Some(_)) => planner.saw(&id),
            Err(e) => return Err((rep(), format!("checking user {id}: {e}"))),
        }
    }
    Ok((
        rep(),
        Finish {
            delta_link,
            full: true,
            mappings_hash: hash,
        },
    ))
}

enum DeltaError {
    Expired(String),
    Other(String),
}

/// One delta round from `link`: the new delta link.
async fn delta(
    svc: &SyncService,
    run: &mut Run,
    planner: &mut Planner,
    ctx: &Context<'_>,
    link: &str,
) -> Result<String, DeltaError> {
    let (client, mappings) = (ctx.client, ctx.mappings);
    let by_group = mappings.iter().any(|m| m.source_kind == "group");
    let mut link = link.to_string();
    loop {
        svc.check_lease(run).map_err(DeltaError::Other)?;
        let page = client
            .delta_page(&link, svc.page_deadline())
            .await
            .map_err(|e| match e {
                GraphError::DeltaExpired(why) => DeltaError::Expired(why),
                other => DeltaError::Other(other.to_string()),
            })?;
        for r in page.removed {
            planner.observe(Seen::Disabled {
                external_id: r.id.to_ascii_lowercase(),
                reason: format!("removed from Entra ID (@removed: {})", r.reason),
            });
        }
        for u in page.users {
            recheck(svc, run, planner, ctx, u, by_group).await?;
        }
        match (page.next_link, page.delta_link) {
            (Some(n), _) => link = n,
            (None, Some(d)) => {
                recheck_deletes(svc, run, planner, ctx, by_group).await?;
                return Ok(d);
            }
            (None, None) => {
                return Err(DeltaError::Other(
                    "a delta page carried neither a nextLink nor a deltaLink".into(),
                ));
            }
        }
    }
}

/// A delta reports only users that changed: one added back to a mapped group (a change of
/// the group, not the user) is not in it. Before retention deletes a preserved user, Graph is
/// asked about it; one that is enabled and mapped again is re-enabled instead.
async fn recheck_deletes(
    svc: &SyncService,
    run: &mut Run,
    planner: &mut Planner,
    ctx: &Context<'_>,
    by_group: bool,
) -> Result<(), DeltaError> {
    let ext = extensions(ctx.mappings);
    for id in planner.delete_candidates(ctx.profiles, ctx.at) {
        let u = ctx
            .client
            .user(&id, &ext, svc.page_deadline())
            .await
            .map_err(|e| DeltaError::Other(format!("checking user {id}: {e}")))?;
        if let Some(u) = u {
            recheck(svc, run, planner, ctx, u, by_group).await?;
        }
    }
    Ok(())
}

/// One user checked against every mapping (its transitive groups read when a mapping is by
/// group), with what that calls for queued.
async fn recheck(
    svc: &SyncService,
    run: &mut Run,
    planner: &mut Planner,
    ctx: &Context<'_>,
    u: GraphUser,
    by_group: bool,
) -> Result<(), DeltaError> {
    let groups = if by_group && u.account_enabled {
        ctx.client
            .transitive_group_ids(&u.id, svc.page_deadline())
            .await
            .map_err(|e| DeltaError::Other(e.to_string()))?
    } else {
        Vec::new()
    };
    let seen = judge(u, groups, ctx.mappings, ctx.config.allow_guests);
    for p in planner.observe(seen) {
        svc.queue(run, p)
            .await
            .map_err(|e| DeltaError::Other(e.to_string()))?;
    }
    Ok(())
}

/// What the mappings make of one Graph user.
fn judge(
    u: GraphUser,
    groups: Vec<String>,
    mappings: &[AzureMappingRow],
    allow_guests: bool,
) -> Seen {
    let id = u.id.to_ascii_lowercase();
    if !u.account_enabled {
        return Seen::Disabled {
            external_id: id,
            reason: "disabled in Entra ID (accountEnabled = false)".into(),
        };
    }
    if u.is_guest() && !allow_guests {
        return Seen::Unmapped {
            external_id: id,
            reason: "a guest, and guests are not allowed (allow_guests)".into(),
        };
    }
    let name = u
        .display_name
        .clone()
        .unwrap_or_else(|| u.user_principal_name.clone());
    let f = Found { user: u, groups };
    let auto_import = |mapping_id: &str| {
        mappings
            .iter()
            .find(|m| m.id == mapping_id)
            .is_some_and(|m| m.auto_import)
    };
    match decide(&f, mappings, allow_guests) {
        Ok(du) => {
            let ai = du
                .assignment
                .as_ref()
                .is_some_and(|a| auto_import(&a.mapping_id));
            Seen::Mapped {
                user: Box::new(du),
                auto_import: ai,
            }
        }
        Err(ResolveError::UserNotMapped(why)) if why.contains("not a valid email") => {
            Seen::Invalid {
                external_id: id,
                name,
                reason: why,
                auto_import: mappings.iter().any(|m| m.auto_import),
            }
        }
        Err(ResolveError::UserDisabled(why)) => Seen::Disabled {
            external_id: id,
            reason: why,
        },
        Err(e) => Seen::Unmapped {
            external_id: id,
            reason: format!("under no Azure AD mapping: {e}"),
        },
    }
}
