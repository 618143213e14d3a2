//! Directory sync: keeps the users AD/LDAP (through the connectors) and Entra ID (through Graph)
//! provisioned in step with their directory — import, update, preserve, re-enable, delete — on a
//! schedule or on demand (docs/sync.md). Owns the run lifecycle: the lease that allows one run
//! per organization across processes, batching of writes, the circuit breaker, approval, the
//! scheduler. The decisions themselves are in `plan` (no I/O); the directories are read in
//! `ldap` and `azure`.

mod azure;
mod ldap;
pub mod plan;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};

use crate::clock::Clock;
use crate::config::SyncSettings;
use crate::directory::Hub;
use crate::directory::graph::GraphClients;
use crate::store::{
    Store, StoreError, SyncCounts, SyncRunRow, SyncRunUserRow, SyncWrite, SyncWritten,
};
use plan::{Planned, Planner};

/// Report lines kept per run for imports and updates (counts are always complete); every
/// preserve, re-enable, delete, skip and error is kept.
const DETAIL_CAP: usize = 10_000;
/// Azure: a full enumeration at least this often, since user deltas do not report group
/// membership changes.
const AZURE_FULL_EVERY_SECS: i64 = 7 * 86_400;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("a sync run is already going for this organization ({0})")]
    InProgress(String),
    #[error(
        "nothing to sync: create AD/LDAP mappings (POST /api/v1/admin/ldap-mappings) or Azure AD mappings with a configuration"
    )]
    NotConfigured,
    #[error("sync run {0} is not awaiting approval (it is {1})")]
    NotPending(String, String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How a run was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Schedule,
    Manual,
    Cli,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Manual => "manual",
            Trigger::Cli => "cli",
        }
    }
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub trigger: Trigger,
    pub dry_run: bool,
    /// Retention evaluated as of this time (dry runs only).
    pub as_of: Option<i64>,
}

/// Called with the counts so far (the CLI's progress bar).
pub type Progress = Arc<dyn Fn(&SyncCounts) + Send + Sync>;

/// How one source was read in a run.
#[derive(Debug, Clone, Serialize)]
pub struct SourceReport {
    pub source: &'static str,
    /// `full` | `delta`
    pub mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Reading the stored users of this directory, and the whole pass, in milliseconds.
    pub load_ms: u64,
    pub elapsed_ms: u64,
}

/// A run as the API shows it.
pub fn run_json(r: &SyncRunRow) -> Value {
    let sources: Value = serde_json::from_str(&r.sources).unwrap_or_else(|_| json!([]));
    json!({
        "id": r.id,
        "trigger": r.run_trigger,
        "dry_run": r.dry_run,
        "as_of": r.as_of.map(crate::clock::rfc3339),
        "status": r.status,
        "started_at": crate::clock::rfc3339(r.started_at),
        "ended_at": r.ended_at.map(crate::clock::rfc3339),
        "replica_id": r.replica_id,
        "counts": r.counts(),
        "held": {"preserve": r.held_preserve, "delete": r.held_delete},
        "sources": sources,
        "error": r.error,
    })
}

pub struct SyncService {
    store: Store,
    hub: Arc<Hub>,
    graph: Arc<GraphClients>,
    clock: Arc<dyn Clock>,
    cfg: SyncSettings,
    replica_id: String,
    heartbeat_window_secs: i64,
}

/// One run under way.
struct Run {
    org_id: String,
    id: String,
    opts: RunOptions,
    /// Time of the run's decisions (the server's clock at the start).
    now: i64,
    lost_lease: Arc<AtomicBool>,
    counts: SyncCounts,
    seq: i64,
    details: usize,
    sources: Vec<SourceReport>,
    progress: Option<Progress>,
    /// Pending writes and report lines of the current batch.
    writes: Vec<SyncWrite>,
    lines: Vec<Option<SyncRunUserRow>>,
    extra: Vec<SyncRunUserRow>,
}

impl SyncService {
    pub fn new(
        store: Store,
        hub: Arc<Hub>,
        graph: Arc<GraphClients>,
        clock: Arc<dyn Clock>,
        cfg: SyncSettings,
        replica_id: String,
        heartbeat_window_secs: u64,
    ) -> SyncService {
        SyncService {
            store,
            hub,
            graph,
            clock,
            cfg,
            replica_id,
            heartbeat_window_secs: heartbeat_window_secs as i64,
        }
    }

    /// Starts a run in the background: its id at once.
    /// Runs execute on a runtime of their own (`runtime()`), so a 100,000-user run neither
    /// waits for nor slows the HTTP workers that serve activations and connector channels.
    pub async fn start(
        self: &Arc<Self>,
        org_id: &str,
        opts: RunOptions,
    ) -> Result<String, SyncError> {
        let run = self.begin(org_id, opts, None).await?;
        let id = run.id.clone();
        let this = self.clone();
        runtime().spawn(async move { this.execute(run).await });
        Ok(id)
    }

    /// Runs to the end in the foreground (the CLI): the finished run.
    pub async fn run(
        self: &Arc<Self>,
        org_id: &str,
        opts: RunOptions,
        progress: Option<Progress>,
    ) -> Result<SyncRunRow, SyncError> {
        let run = self.begin(org_id, opts, progress).await?;
        let (org, id) = (run.org_id.clone(), run.id.clone());
        self.clone().execute(run).await;
        Ok(self.store.sync_run(&org, &id).await?)
    }

    /// What a run of the organization covers: AD/LDAP when it has mappings or users that
    /// came from AD/LDAP (with every mapping gone they are all unmapped); Azure AD likewise,
    /// when it has a configuration or Azure AD mappings.
    async fn sources(&self, org_id: &str) -> Result<(bool, bool), StoreError> {
        let ldap = !self.store.ldap_mappings(org_id).await?.is_empty()
            || self
                .store
                .has_directory_users(org_id, crate::resolve::ldap::SOURCE)
                .await?;
        let azure = !self.store.azure_mappings(org_id).await?.is_empty()
            || (self.store.azure_config(org_id).await?.is_some()
                && self
                    .store
                    .has_directory_users(org_id, crate::resolve::azure::SOURCE)
                    .await?);
        Ok((ldap, azure))
    }

    async fn configured(&self, org_id: &str) -> Result<bool, SyncError> {
        let (ldap, azure) = self.sources(org_id).await?;
        Ok(ldap || azure)
    }

    async fn begin(
        &self,
        org_id: &str,
        opts: RunOptions,
        progress: Option<Progress>,
    ) -> Result<Run, SyncError> {
        if opts.as_of.is_some() && !opts.dry_run {
            return Err(SyncError::Invalid(
                "as_of previews a run at another time and is only allowed with dry_run=true".into(),
            ));
        }
        if !self.configured(org_id).await? {
            return Err(SyncError::NotConfigured);
        }
        let now = self.clock.now();
        let row = SyncRunRow {
            id: crate::store::new_id(),
            org_id: org_id.to_string(),
            run_trigger: opts.trigger.as_str().into(),
            dry_run: opts.dry_run,
            as_of: opts.as_of,
            status: "running".into(),
            started_at: now,
            ended_at: None,
            replica_id: self.replica_id.clone(),
            seen: 0,
            imported: 0,
            updated: 0,
            preserved: 0,
            reenabled: 0,
            deleted: 0,
            skipped: 0,
            errors: 0,
            held_preserve: 0,
            held_delete: 0,
            sources: "[]".into(),
            error: None,
        };
        match self
            .store
            .start_sync_run(&row, now + self.cfg.lease_secs as i64)
            .await?
        {
            Ok(()) => {}
            Err(holder) => {
                return Err(SyncError::InProgress(
                    holder.unwrap_or_else(|| "another run".into()),
                ));
            }
        }
        tracing::info!(org_id, run_id = %row.id, trigger = row.run_trigger, dry_run = opts.dry_run, "sync run started");
        Ok(Run {
            org_id: org_id.to_string(),
            id: row.id,
            opts,
            now,
            lost_lease: Arc::new(AtomicBool::new(false)),
            counts: SyncCounts::default(),
            seq: 0,
            details: 0,
            sources: Vec::new(),
            progress,
            writes: Vec::new(),
            lines: Vec::new(),
            extra: Vec::new(),
        })
    }

    /// The whole run; its row records how it ended, whatever happens.
    async fn execute(self: Arc<Self>, mut run: Run) {
        // Renews the lease while the run works; a lost lease stops the run at its next page.
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let renew = {
            let (store, clock) = (self.store.clone(), self.clock.clone());
            let (org, id, lost) = (run.org_id.clone(), run.id.clone(), run.lost_lease.clone());
            let lease = self.cfg.lease_secs;
            tokio::spawn(async move {
                let every = Duration::from_secs((lease / 3).max(1));
                let mut renewed = clock.now();
                loop {
                    tokio::select! {
                        _ = &mut stop_rx => return,
                        _ = tokio::time::sleep(every) => {}
                    }
                    match store
                        .renew_sync_lease(&org, &id, clock.now() + lease as i64)
                        .await
                    {
                        Ok(true) => renewed = clock.now(),
                        Ok(false) => {
                            lost.store(true, Ordering::SeqCst);
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "renewing the sync lease failed");
                            // Past its expiry the lease may be another run's: stop.
                            if clock.now() >= renewed + lease as i64 {
                                lost.store(true, Ordering::SeqCst);
                                return;
                            }
                        }
                    }
                }
            })
        };
        let outcome = self.work(&mut run).await;
        let _ = stop_tx.send(());
        let _ = renew.await;
        let ended = self.clock.now();
        let sources = serde_json::to_string(&run.sources).unwrap_or_else(|_| "[]".into());
        let (status, held, error) = match outcome {
            Ok(end) => (end.status, end.held, None),
            Err(e) => {
                tracing::warn!(org_id = %run.org_id, run_id = %run.id, error = %e, "sync run failed");
                run.counts.errors += 1;
                ("failed", (0, 0), Some(e))
            }
        };
        if let Err(e) = self
            .store
            .record_sync_run(
                &run.org_id,
                &run.id,
                status,
                &run.counts,
                held,
                &sources,
                error.as_deref(),
                Some(ended),
            )
            .await
        {
            tracing::error!(run_id = %run.id, error = %e, "recording the end of a sync run failed; its lease expires by itself");
        }
        crate::metrics::SYNC_RUNS.inc(&[status]);
        tracing::info!(org_id = %run.org_id, run_id = %run.id, status, counts = ?run.counts, "sync run ended");
    }

    async fn work(&self, run: &mut Run) -> Result<End, String> {
        let s = |e: StoreError| e.to_string();
        let settings = self.store.sync_settings(&run.org_id).await.map_err(s)?;
        let profiles = self.store.profiles(&run.org_id).await.map_err(s)?;
        let (do_ldap, do_azure) = self.sources(&run.org_id).await.map_err(s)?;
        let at = run.opts.as_of.unwrap_or(run.now);
        let mut planners: Vec<(Planner, bool)> = Vec::new();
        let mut azure_state: Option<azure::Finish> = None;

        if do_ldap {
            let t0 = std::time::Instant::now();
            let mappings = self.store.ldap_mappings(&run.org_id).await.map_err(s)?;
            let (planner, r) = ldap::pass(self, run, settings.clone(), &mappings).await;
            let p = planner?;
            run.counts.seen += p.seen() as i64;
            self.flush(run).await.map_err(s)?;
            let mut report = SourceReport {
                source: crate::resolve::ldap::SOURCE,
                mode: "full",
                reason: mappings
                    .is_empty()
                    .then(|| "no AD/LDAP mappings: every AD/LDAP user is unmapped".into()),
                error: None,
                load_ms: p.load_ms,
                elapsed_ms: t0.elapsed().as_millis() as u64,
            };
            if let Err(e) = r {
                report.error = Some(e.clone());
                run.sources.push(report);
                return Err(format!("AD/LDAP: {e}; no user was preserved or deleted"));
            }
            run.sources.push(report);
            planners.push((p, true));
        }

        if do_azure {
            let t0 = std::time::Instant::now();
            let mut report = SourceReport {
                source: crate::resolve::azure::SOURCE,
                mode: "full",
                reason: None,
                error: None,
                load_ms: 0,
                elapsed_ms: 0,
            };
            let client = self
                .graph
                .get_with_config(&run.org_id)
                .await
                .map_err(|e| e.to_string())?;
            let Some((client, config)) = client else {
                let e = "Azure AD mappings exist but Azure AD is not configured (PUT /api/v1/admin/azure)".to_string();
                report.error = Some(e.clone());
                run.sources.push(report);
                return Err(format!("Azure AD: {e}; no user was preserved or deleted"));
            };
            let mappings = self.store.azure_mappings(&run.org_id).await.map_err(s)?;
            let stored = self
                .store
                .directory_users(&run.org_id, crate::resolve::azure::SOURCE)
                .await
                .map_err(s)?;
            let p_load = t0.elapsed().as_millis() as u64;
            let mut p = Planner::new(crate::resolve::azure::SOURCE, settings.clone(), stored);
            let load_ms = p_load;
            let ctx = azure::Context {
                client: &client,
                config: &config,
                mappings: &mappings,
                profiles: &profiles,
                at,
            };
            let r = azure::pass(self, run, &mut p, &ctx).await;
            run.counts.seen += p.seen() as i64;
            self.flush(run).await.map_err(s)?;
            let timed = |mut r: SourceReport| {
                r.load_ms = load_ms;
                r.elapsed_ms = t0.elapsed().as_millis() as u64;
                r
            };
            match r
                .map(|(r, f)| (timed(r), f))
                .map_err(|(r, e)| (timed(r), e))
            {
                Ok((report, finish)) => {
                    let full = report.mode == "full";
                    run.sources.push(report);
                    planners.push((p, full));
                    azure_state = Some(finish);
                }
                Err((mut report, e)) => {
                    report.error = Some(e.clone());
                    run.sources.push(report);
                    return Err(format!("Azure AD: {e}; no user was preserved or deleted"));
                }
            }
        }
        self.check_lease(run)?;

        // Every source completed: the preserves and deletes it calls for.
        let connected = self.connector_connected(&run.org_id).await.map_err(s)?;
        let mut lifecycle: Vec<Planned> = Vec::new();
        let mut population = 0;
        for (p, full) in &planners {
            population += p.stored_count();
            let preserves = p.preserves(*full, run.now);
            let preserving: HashMap<String, i64> = preserves
                .iter()
                .filter_map(|x| match &x.write {
                    Some(SyncWrite::Preserve { user_id, .. }) => Some((user_id.clone(), run.now)),
                    _ => None,
                })
                .collect();
            lifecycle.extend(preserves);
            // AD/LDAP users are only deleted while a connector is connected (a directory that
            // cannot be asked is no evidence that anyone left).
            if p.source != crate::resolve::ldap::SOURCE || connected {
                lifecycle.extend(p.deletes(&profiles, at, &preserving));
            }
        }
        let held = (
            lifecycle
                .iter()
                .filter(|p| p.line.action == "preserved")
                .count() as i64,
            lifecycle
                .iter()
                .filter(|p| p.line.action == "deleted")
                .count() as i64,
        );
        let mass = plan::is_mass_change(&settings, lifecycle.len(), population);
        let status = if mass && !run.opts.dry_run {
            // Held back: recorded, not applied, until an admin approves.
            for mut p in lifecycle {
                p.line.applied = false;
                self.report(run, p.line);
            }
            self.flush(run).await.map_err(s)?;
            "needs_approval"
        } else if run.opts.dry_run {
            for p in lifecycle {
                self.queue(run, p).await.map_err(s)?;
            }
            self.flush(run).await.map_err(s)?;
            "completed"
        } else {
            // Every preserve and delete in one transaction: all of them or none.
            self.flush(run).await.map_err(s)?;
            let mut writes = Vec::new();
            let mut lines = Vec::new();
            for p in lifecycle {
                if let Some(w) = p.write {
                    run.seq += 1;
                    let mut l = p.line;
                    l.seq = run.seq;
                    writes.push(w);
                    lines.push(Some(l));
                }
            }
            self.apply(run, writes, lines, Vec::new())
                .await
                .map_err(s)?;
            "completed"
        };
        if !run.opts.dry_run {
            // The delta link moves on only when everything it reported was applied: a run
            // awaiting approval reads the same changes again next time.
            if status == "completed"
                && let Some(f) = azure_state
            {
                f.store(&self.store, &run.org_id, run.now)
                    .await
                    .map_err(s)?;
            }
            self.store
                .supersede_pending_runs(&run.org_id, &run.id)
                .await
                .map_err(s)?;
        }
        Ok(End {
            status,
            held: if status == "needs_approval" || (mass && run.opts.dry_run) {
                held
            } else {
                (0, 0)
            },
        })
    }

    fn check_lease(&self, run: &Run) -> Result<(), String> {
        if run.lost_lease.load(Ordering::SeqCst) {
            return Err("the run lost its lease (another process took over)".into());
        }
        Ok(())
    }

    /// Whether a connector of the organization is connected now (any replica).
    async fn connector_connected(&self, org_id: &str) -> Result<bool, StoreError> {
        let since = self.clock.now() - self.heartbeat_window_secs;
        Ok(!self
            .store
            .connector_sessions(org_id, since)
            .await?
            .is_empty())
    }

    fn page_deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_millis(self.cfg.page_timeout_ms)
    }

    /// Adds a report line that comes with no write (a skip).
    fn report(&self, run: &mut Run, mut line: SyncRunUserRow) {
        if !self.keep_detail(run, &line.action) {
            return;
        }
        run.seq += 1;
        line.seq = run.seq;
        run.extra.push(line);
    }

    fn keep_detail(&self, run: &mut Run, action: &str) -> bool {
        if matches!(action, "imported" | "updated") {
            if run.details >= DETAIL_CAP {
                return false;
            }
            run.details += 1;
        }
        true
    }

    /// Queues a planned change (or records a skip), flushing a full batch.
    async fn queue(&self, run: &mut Run, p: Planned) -> Result<(), StoreError> {
        match p.write {
            None => {
                if p.line.action == "skipped" {
                    run.counts.skipped += 1;
                }
                self.report(run, p.line);
            }
            Some(w) => {
                let keep = self.keep_detail(run, &p.line.action);
                let line = keep.then(|| {
                    run.seq += 1;
                    let mut l = p.line;
                    l.seq = run.seq;
                    l
                });
                run.writes.push(w);
                run.lines.push(line);
            }
        }
        if run.writes.len() + run.extra.len() >= self.cfg.batch_size as usize {
            self.flush(run).await?;
        }
        Ok(())
    }

    /// Writes the batch (one transaction; a dry run writes only its report lines, marked not
    /// applied) and records the run's counts.
    async fn flush(&self, run: &mut Run) -> Result<(), StoreError> {
        let writes = std::mem::take(&mut run.writes);
        let lines = std::mem::take(&mut run.lines);
        let extra = std::mem::take(&mut run.extra);
        if writes.is_empty() && extra.is_empty() {
            return Ok(());
        }
        if run.opts.dry_run {
            let mut all: Vec<SyncRunUserRow> = Vec::with_capacity(lines.len() + extra.len());
            for (w, l) in writes.iter().zip(lines) {
                count(&mut run.counts, w, &SyncWritten::Done(String::new()));
                if let Some(mut l) = l {
                    l.applied = false;
                    all.push(l);
                }
            }
            for mut l in extra {
                l.applied = false;
                all.push(l);
            }
            all.sort_by_key(|l| l.seq);
            self.store.add_sync_run_users(&run.id, &all).await?;
        } else {
            return self.apply(run, writes, lines, extra).await;
        }
        self.progress(run).await
    }

    /// Writes one batch (fenced by the run's lease) and records the counts.
    async fn apply(
        &self,
        run: &mut Run,
        writes: Vec<SyncWrite>,
        mut lines: Vec<Option<SyncRunUserRow>>,
        extra: Vec<SyncRunUserRow>,
    ) -> Result<(), StoreError> {
        if writes.is_empty() && extra.is_empty() {
            return Ok(());
        }
        let actor = format!("sync:{}", run.id);
        let results = self
            .store
            .apply_sync_batch(
                &run.org_id,
                &run.id,
                &actor,
                &writes,
                &mut lines,
                &extra,
                self.clock.now(),
            )
            .await?;
        let Some(results) = results else {
            run.lost_lease.store(true, Ordering::SeqCst);
            return Err(StoreError::Internal(
                "the run lost its lease (another process took over); its last batch was not written".into(),
            ));
        };
        for (w, r) in writes.iter().zip(&results) {
            count(&mut run.counts, w, r);
        }
        self.progress(run).await
    }

    async fn progress(&self, run: &Run) -> Result<(), StoreError> {
        if let Some(p) = &run.progress {
            p(&run.counts);
        }
        let sources = serde_json::to_string(&run.sources).unwrap_or_else(|_| "[]".into());
        self.store
            .record_sync_run(
                &run.org_id,
                &run.id,
                "running",
                &run.counts,
                (0, 0),
                &sources,
                None,
                None,
            )
            .await
    }

    /// Applies the held-back preserves and deletes of a run awaiting approval, under the
    /// organization's lease (no run goes meanwhile) and in one transaction. Each is re-checked:
    /// a user whose status changed since the run started is left alone, a delete only applies
    /// to the preservation the run saw, still past its profile's retention now, and (AD/LDAP)
    /// while a connector is connected.
    pub async fn approve(&self, org_id: &str, run_id: &str) -> Result<SyncRunRow, SyncError> {
        let run = self.store.sync_run(org_id, run_id).await?;
        let now = self.clock.now();
        match self
            .store
            .begin_sync_approval(
                org_id,
                run_id,
                &self.replica_id,
                now,
                now + self.cfg.lease_secs as i64,
            )
            .await?
        {
            Ok(()) => {}
            Err(Some(holder)) => return Err(SyncError::InProgress(holder)),
            Err(None) => return Err(SyncError::NotPending(run.id, run.status)),
        }
        let r = self.apply_held(org_id, &run, now).await;
        let (status, counts) = match &r {
            Ok(c) => ("approved", c.clone()),
            Err(_) => ("needs_approval", run.counts()),
        };
        self.store
            .end_sync_approval(org_id, run_id, status, &counts)
            .await?;
        crate::metrics::SYNC_RUNS.inc(&[status]);
        r?;
        Ok(self.store.sync_run(org_id, run_id).await?)
    }

    async fn apply_held(
        &self,
        org_id: &str,
        run: &SyncRunRow,
        now: i64,
    ) -> Result<SyncCounts, SyncError> {
        let mut counts = run.counts();
        let profiles = self.store.profiles(org_id).await?;
        let connected = self.connector_connected(org_id).await?;
        let mut writes = Vec::new();
        let mut seqs = Vec::new();
        let mut after = 0;
        loop {
            let page = self.store.sync_run_users(&run.id, None, after, 500).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for l in page.into_iter().filter(|l| !l.applied) {
                let Some(user_id) = l.user_id.clone() else {
                    continue;
                };
                let reason = l.reason.clone().unwrap_or_default();
                let w = match l.action.as_str() {
                    "preserved" => SyncWrite::Preserve {
                        user_id,
                        reason,
                        since: run.started_at,
                    },
                    "deleted" => {
                        let Some(since) = l.preserved_at else {
                            continue;
                        };
                        if l.source == crate::resolve::ldap::SOURCE && !connected {
                            continue;
                        }
                        let Ok(u) = self.store.user(org_id, &user_id).await else {
                            continue;
                        };
                        let due = profiles
                            .iter()
                            .find(|p| p.name == u.profile)
                            .is_some_and(|p| {
                                p.auto_delete_preserved
                                    && since + p.delete_after_days * 86_400 <= now
                            });
                        if !due {
                            continue;
                        }
                        SyncWrite::Delete {
                            user_id,
                            preserved_at: since,
                            reason,
                        }
                    }
                    _ => continue,
                };
                writes.push(w);
                seqs.push(l.seq);
            }
        }
        if writes.is_empty() {
            return Ok(counts);
        }
        let actor = format!("sync-approval:{}", run.id);
        let mut none: Vec<Option<SyncRunUserRow>> = vec![None; writes.len()];
        let results = self
            .store
            .apply_sync_batch(org_id, &run.id, &actor, &writes, &mut none, &[], now)
            .await?
            .ok_or_else(|| {
                SyncError::Store(StoreError::Internal(
                    "the approval lost its lease; nothing was applied".into(),
                ))
            })?;
        let applied: Vec<i64> = seqs
            .iter()
            .zip(&results)
            .filter(|(_, r)| matches!(r, SyncWritten::Done(_)))
            .map(|(s, _)| *s)
            .collect();
        for (w, r) in writes.iter().zip(&results) {
            if matches!(r, SyncWritten::Done(_)) {
                count(&mut counts, w, r);
            }
        }
        self.store
            .mark_sync_run_users_applied(&run.id, &applied)
            .await?;
        Ok(counts)
    }

    /// Drops the held-back changes of a run awaiting approval.
    pub async fn reject(&self, org_id: &str, run_id: &str) -> Result<SyncRunRow, SyncError> {
        let run = self.store.sync_run(org_id, run_id).await?;
        if !self
            .store
            .set_sync_run_status(org_id, run_id, "needs_approval", "rejected")
            .await?
        {
            return Err(SyncError::NotPending(run.id, run.status));
        }
        Ok(self.store.sync_run(org_id, run_id).await?)
    }

    /// When the organization's next scheduled run is due: an interval after the last run
    /// started (or after its first mapping was created; an hour after a failed run, at most),
    /// plus a per-organization jitter of up to 5% of the interval.
    pub async fn next_run_at(&self, org_id: &str) -> Result<Option<i64>, StoreError> {
        let settings = self.store.sync_settings(org_id).await?;
        let interval = settings.auto_sync_interval_hours * 3600;
        let jitter = jitter(org_id, interval);
        if let Some((started, status)) = self.store.last_sync_run(org_id).await? {
            let wait = if status == "failed" {
                interval.min(3600)
            } else {
                interval
            };
            return Ok(Some(started + wait + jitter));
        }
        let l = self.store.ldap_mappings(org_id).await?;
        let a = self.store.azure_mappings(org_id).await?;
        Ok(l.iter()
            .map(|m| m.created_at)
            .chain(a.iter().map(|m| m.created_at))
            .min()
            .map(|t| t + interval + jitter))
    }

    /// Runs due syncs every `tick_secs` until the process ends.
    pub async fn scheduler(self: Arc<Self>) {
        let tick = Duration::from_secs(self.cfg.tick_secs);
        loop {
            tokio::time::sleep(tick).await;
            if let Err(e) = self.tick().await {
                tracing::warn!(error = %e, "sync scheduler tick failed");
            }
        }
    }

    async fn tick(self: &Arc<Self>) -> Result<(), StoreError> {
        let now = self.clock.now();
        for org in self.store.orgs_with_directory_mappings().await? {
            let due = match self.next_run_at(&org).await? {
                Some(t) => t <= now,
                None => false,
            };
            if !due {
                continue;
            }
            let opts = RunOptions {
                trigger: Trigger::Schedule,
                dry_run: false,
                as_of: None,
            };
            match self.start(&org, opts).await {
                Ok(id) => tracing::info!(org_id = %org, run_id = %id, "scheduled sync started"),
                Err(SyncError::InProgress(_)) | Err(SyncError::NotConfigured) => {}
                Err(e) => tracing::warn!(org_id = %org, error = %e, "scheduled sync not started"),
            }
        }
        Ok(())
    }
}

/// The process-wide runtime sync runs execute on (two worker threads; never dropped, so no
/// runtime is ever shut down from async code).
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("imd-sync")
            .enable_all()
            .build()
            .expect("the sync runtime starts")
    })
}

/// How a run that got through all its sources ended.
struct End {
    status: &'static str,
    held: (i64, i64),
}

fn count(c: &mut SyncCounts, w: &SyncWrite, r: &SyncWritten) {
    if !matches!(r, SyncWritten::Done(_)) {
        c.skipped += 1;
        return;
    }
    match w {
        SyncWrite::Import(_) => c.imported += 1,
        SyncWrite::Update { .. } => c.updated += 1,
        SyncWrite::Reenable { .. } => c.reenabled += 1,
        SyncWrite::Preserve { .. } => c.preserved += 1,
        SyncWrite::Delete { .. } => c.deleted += 1,
    }
}

/// A stable per-organization offset in [0, 5% of the interval), so organizations created
/// together do not all sync at the same moment.
fn jitter(org_id: &str, interval: i64) -> i64 {
    let span = (interval / 20).max(1);
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, org_id.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d.as_ref()[..8]);
    (u64::from_be_bytes(b) % span as u64) as i64
}

#[cfg(test)]
mod tests {
    #[test]
    fn jitter_stays_within_five_percent_and_is_stable() {
        let i = 24 * 3600;
        for org in ["a", "b", "org-123"] {
            let j = super::jitter(org, i);
            assert!((0..i / 20).contains(&j));
            assert_eq!(j, super::jitter(org, i));
        }
    }
}
