//! `imd demo`: the main job end to end in one command, on a throwaway embedded (SQLite) database.
//! It creates an organization, starts the server in this process on a loopback port, mints a v4
//! token, uploads a realistic device map over HTTP, lets one simulated agent per device activate
//! concurrently, re-activates a sample to show idempotence, and prints what to look at with curl.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::clock::SystemClock;
use crate::config::{self, Settings};
use crate::domain::IdentifierType;
use crate::loadgen::{self, Activated, Fleet, PhaseStats, Run, count};
use crate::startup::Application;

/// Every load loop is bounded in time as well as in count; the demo finishes in seconds, so this
/// only stops a run against a wedged server.
const TIME_LIMIT: Duration = Duration::from_secs(600);
/// Every 20th activated device is activated again: a 5% sample.
const REPEAT_EVERY: usize = 20;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Devices in the generated device map; each is activated by its own simulated agent.
    #[arg(long, default_value_t = 1000, value_parser = count(1, 200_000))]
    pub devices: usize,
    /// Simulated agents activating at the same time.
    #[arg(long, default_value_t = 32, value_parser = count(1, 1024))]
    pub concurrency: usize,
    /// Keep the data directory and leave the server running until Ctrl-C, to look around with curl.
    #[arg(long)]
    pub keep: bool,
    /// Data directory (default: a fresh temporary directory, removed at exit unless --keep).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

fn step(n: u32, text: impl std::fmt::Display) {
    println!("[{n}/7] {text}");
}

/// Only an explicit `--config` is read, never `./imd.toml` or `IMD_*` variables, and the database,
/// key and listener are forced into the demo's own directory: the demo must not create
/// organizations in whatever database the surrounding environment points at.
fn demo_settings(config_file: Option<&Path>, dir: &Path) -> anyhow::Result<Settings> {
    let file = config_file.unwrap_or(Path::new("/dev/null"));
    let mut s = config::load(
        Some(file),
        Vec::new(),
        &[
            ("listen", "127.0.0.1:0".into()),
            ("data_dir", dir.display().to_string()),
            // Every simulated agent shares 127.0.0.1: a per-address failure limit would treat
            // the whole fleet as one misbehaving client.
            ("limits.activation_failures_per_minute", "0".into()),
        ],
    )?;
    s.database_url = None;
    s.master_key_file = None;
    s.public_url = None;
    // Plain HTTP on loopback: the simulated agents do not trust a configured certificate.
    s.tls = Default::default();
    Ok(s)
}

fn progress_bar(len: usize) -> ProgressBar {
    // A bar redrawn into a pipe or a log file is noise.
    if !std::io::stdout().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len as u64), ProgressDrawTarget::stdout());
    if let Ok(style) = ProgressStyle::with_template(
        "      [{bar:40}] {pos}/{len} activations, {elapsed} elapsed, eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Activates the devices `subset` names, `concurrency` agents at a time.
async fn activate_subset(
    client: &reqwest::Client,
    url: &Arc<str>,
    bodies: &Arc<Vec<Bytes>>,
    subset: &Arc<Vec<usize>>,
    concurrency: usize,
    deadline: Instant,
    bar: &ProgressBar,
) -> Run<Activated> {
    let (client, url, bodies, ids) = (client.clone(), url.clone(), bodies.clone(), subset.clone());
    loadgen::run(subset.len(), concurrency, deadline, bar, move |i| {
        let (client, url, body) = (client.clone(), url.clone(), bodies[ids[i]].clone());
        async move { loadgen::activate(&client, &url, body, deadline).await }
    })
    .await
}

/// Everything that did not go as a healthy rollout should, with an example message per kind.
#[derive(Default)]
struct Unexpected {
    by_kind: BTreeMap<String, (usize, String)>,
}

impl Unexpected {
    fn add(&mut self, kind: impl Into<String>, example: impl Into<String>) {
        let e = self
            .by_kind
            .entry(kind.into())
            .or_insert((0, example.into()));
        e.0 += 1;
    }

    fn total(&self) -> usize {
        self.by_kind.values().map(|(n, _)| n).sum()
    }
}

pub async fn run(args: DemoArgs, config_file: Option<&Path>) -> anyhow::Result<ExitCode> {
    let deadline = Instant::now() + TIME_LIMIT;
    let temp = match &args.data_dir {
        Some(_) => None,
        None => Some(tempfile::Builder::new().prefix("imd-demo-").tempdir()?),
    };
    let data_dir = match (&args.data_dir, &temp) {
        (Some(d), _) => d.clone(),
        (None, Some(t)) => t.path().to_path_buf(),
        (None, None) => unreachable!("a temporary directory is made when none is given"),
    };
    println!(
        "imd demo: {} devices, {} agents at a time",
        args.devices, args.concurrency
    );
    let fate = match (&temp, args.keep) {
        (Some(_), false) => "temporary, removed at exit",
        (Some(_), true) => "temporary, kept (--keep)",
        (None, _) => "yours, left in place",
    };
    println!("data directory: {} ({fate})", data_dir.display());

    let settings = demo_settings(config_file, &data_dir)?;
    let (org, admin_key) = crate::cli::create_org(&settings, "Demo Org").await?;
    step(
        1,
        format_args!("created organization \"{}\" ({})", org.name, org.id),
    );

    let app = Application::build(settings, Arc::new(SystemClock)).await?;
    let base = format!("http://{}", app.addr());
    let mut server = tokio::spawn(app.run_until_stopped());
    step(
        2,
        format_args!("server listening on {base} (in this process)"),
    );

    let client = loadgen::http_client(args.concurrency)?;
    let (token, token_id) =
        loadgen::mint_v4_token(&client, &base, &admin_key, "demo rollout").await?;
    step(
        3,
        format_args!("minted v4 token \"demo rollout\" ({token_id})"),
    );

    let fleet = Fleet::varied(args.devices)?;
    step(
        4,
        format_args!(
            "generated a device map of {} devices for {} users: {} serial-number, {} uuid, {} \
             hostname; {} users with a second machine, {} replacing an older one (oldDeviceName)",
            fleet.devices.len(),
            fleet.users,
            fleet.count(IdentifierType::SerialNumber),
            fleet.count(IdentifierType::Uuid),
            fleet.count(IdentifierType::Hostname),
            fleet.two_device_users,
            fleet.replacements.len()
        ),
    );

    let (report, csv_len, took) =
        loadgen::upload_fleet(&client, &base, &admin_key, &fleet, deadline).await?;
    step(
        5,
        format_args!(
            "uploaded the device map ({:.1} KB) in {:.0} ms: {} rows, {} valid, {} invalid, {} \
             created, {} updated",
            csv_len as f64 / 1024.0,
            loadgen::ms(took),
            report["rows_total"],
            report["rows_valid"],
            report["rows_invalid"],
            report["created"],
            report["updated"]
        ),
    );

    // Replacement machines go last, in their own wave: `oldDeviceName` can only retire a machine
    // that is already active.
    let bodies: Arc<Vec<Bytes>> = Arc::new(
        fleet
            .devices
            .iter()
            .map(|d| d.activation_body(&token))
            .collect(),
    );
    let url: Arc<str> = format!("{base}/api/v1/activations").into();
    let refreshes: HashSet<usize> = fleet.replacements.iter().map(|r| r.0).collect();
    let retired: HashSet<usize> = fleet.replacements.iter().map(|r| r.1).collect();
    let first: Arc<Vec<usize>> = Arc::new(
        (0..fleet.devices.len())
            .filter(|i| !refreshes.contains(i))
            .collect(),
    );
    let second: Arc<Vec<usize>> = Arc::new(fleet.replacements.iter().map(|r| r.0).collect());
    step(
        6,
        format_args!(
            "{} simulated agents activate over HTTP, {} at a time (install key each; 503/429 \
             retried up to {} times as Retry-After says)",
            fleet.devices.len(),
            args.concurrency,
            loadgen::MAX_RETRIES
        ),
    );
    let bar = progress_bar(fleet.devices.len());
    let t = Instant::now();
    let wave1 = activate_subset(
        &client,
        &url,
        &bodies,
        &first,
        args.concurrency,
        deadline,
        &bar,
    )
    .await;
    let wave2 = activate_subset(
        &client,
        &url,
        &bodies,
        &second,
        args.concurrency,
        deadline,
        &bar,
    )
    .await;
    let wall = t.elapsed();
    bar.finish_and_clear();

    let mut unexpected = Unexpected::default();
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    let mut device_ids: HashMap<usize, String> = HashMap::new();
    let mut results: HashMap<usize, Activated> = HashMap::new();
    let mut users_created = 0;
    let mut retries = 0u64;
    for (run, subset) in [(&wave1, &first), (&wave2, &second)] {
        retries += PhaseStats::of(run).retries;
        if run.not_started() > 0 {
            unexpected.add(
                "not started (time limit)",
                format!("{} activations", run.not_started()),
            );
        }
        for s in &run.samples {
            let device = subset[s.index];
            match &s.result {
                Ok(a) if a.status == 201 => {
                    users_created += usize::from(a.user_created);
                    device_ids.insert(device, a.device_id.clone());
                    results.insert(device, a.clone());
                }
                Ok(a) => unexpected.add(
                    format!("first activation answered {}", a.status),
                    fleet.devices[device].device_name.clone(),
                ),
                Err(f) => {
                    *errors.entry(f.code.clone()).or_insert(0) += 1;
                    unexpected.add(
                        format!("error {}", f.code),
                        format!("{}: {}", fleet.devices[device].device_name, f.message),
                    );
                }
            }
        }
    }
    let activated = device_ids.len();
    let mut refreshed = 0;
    for &(new, old) in &fleet.replacements {
        let (Some(a), Some(old_id)) = (results.get(&new), device_ids.get(&old)) else {
            continue;
        };
        if a.replaced_device_id.as_deref() == Some(old_id.as_str()) {
            refreshed += 1;
        } else {
            unexpected.add(
                "refresh did not retire the old machine",
                format!(
                    "{} should have replaced {}",
                    fleet.devices[new].device_name, fleet.devices[old].device_name
                ),
            );
        }
    }

    // Idempotence: the same agent again (same install key) gets 200 and the same device back.
    let sample: Arc<Vec<usize>> = Arc::new(
        first
            .iter()
            .copied()
            .filter(|i| device_ids.contains_key(i) && !retired.contains(i))
            .step_by(REPEAT_EVERY)
            .collect(),
    );
    let repeats = activate_subset(
        &client,
        &url,
        &bodies,
        &sample,
        args.concurrency,
        deadline,
        &ProgressBar::hidden(),
    )
    .await;
    let mut repeats_ok = 0;
    for s in &repeats.samples {
        let device = sample[s.index];
        match &s.result {
            Ok(a) if a.status == 200 && device_ids.get(&device) == Some(&a.device_id) => {
                repeats_ok += 1;
            }
            Ok(a) => unexpected.add(
                "repeat activation not idempotent",
                format!(
                    "{} answered {} with device {}",
                    fleet.devices[device].device_name, a.status, a.device_id
                ),
            ),
            Err(f) => {
                *errors.entry(f.code.clone()).or_insert(0) += 1;
                unexpected.add(
                    format!("repeat error {}", f.code),
                    format!("{}: {}", fleet.devices[device].device_name, f.message),
                );
            }
        }
    }
    step(
        7,
        format_args!(
            "re-activated {} devices (every {REPEAT_EVERY}th): {repeats_ok} answered 200 with the \
             same device id",
            sample.len()
        ),
    );

    let errors_line = if errors.is_empty() {
        "none".to_string()
    } else {
        errors
            .iter()
            .map(|(c, n)| format!("{c} x{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!();
    println!("Summary");
    println!(
        "  activated         {activated} of {} devices ({refreshed} replaced an older machine)",
        fleet.devices.len()
    );
    println!("  repeats OK        {repeats_ok} of {}", sample.len());
    println!(
        "  users created     {users_created} ({} users in the map)",
        fleet.users
    );
    println!("  errors by code    {errors_line}");
    println!("  retries (503/429) {retries}");
    println!("  wall time         {:.2} s", wall.as_secs_f64());
    println!(
        "  throughput        {:.0} activations/s ({} agents at a time)",
        loadgen::per_sec(activated, wall),
        args.concurrency
    );
    if unexpected.total() > 0 {
        println!();
        println!("Unexpected results: {}", unexpected.total());
        for (kind, (n, example)) in &unexpected.by_kind {
            println!("  {kind}: {n} (e.g. {example})");
        }
    }

    println!();
    if args.keep {
        println!("Look around (the server keeps running until Ctrl-C):");
    } else {
        println!("To look around, run with --keep; the server stops when the demo exits:");
    }
    for path in [
        "/api/v1/admin/devices?limit=5",
        "/api/v1/admin/devices?status=replaced",
        "/api/v1/admin/users?limit=5",
        "/api/v1/admin/activations?limit=5",
    ] {
        println!("  curl -s -H 'Authorization: Bearer {admin_key}' '{base}{path}'");
    }
    println!("  console: {base}/console (sign in with the admin key above)");

    let code = if unexpected.total() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    };
    if args.keep {
        let kept = temp.map(tempfile::TempDir::keep).unwrap_or(data_dir);
        println!("  data directory: {}", kept.display());
        // The server stops itself on SIGINT (gracefully); waiting for Ctrl-C as well covers a
        // platform where it does not.
        tokio::select! {
            _ = &mut server => {}
            _ = tokio::signal::ctrl_c() => {
                let _ = tokio::time::timeout(Duration::from_secs(15), &mut server).await;
            }
        }
        println!("server stopped");
    } else {
        server.abort();
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_small_demo_runs_clean_end_to_end() {
        // 300 devices: every kind of row, a two-device user and one hardware refresh.
        let args = DemoArgs {
            devices: 300,
            concurrency: 8,
            keep: false,
            data_dir: None,
        };
        let code = run(args, None).await.expect("demo runs");
        assert_eq!(code, ExitCode::SUCCESS);
    }
}
