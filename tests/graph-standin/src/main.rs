//! `graph-standin [--bulk N] [--tenant FILE] [--listen ADDR]`: starts the stand-in, prints one
//! JSON line `{"authority_url","graph_url","tenant_id","client_id","client_secret"}` on stdout,
//! then serves until killed.

use std::io::Write;

use graph_standin::{StandIn, Tenant};

fn usage() -> ! {
    eprintln!("usage: graph-standin [--bulk N] [--tenant tenant.json] [--listen 127.0.0.1:0]");
    std::process::exit(2);
}

fn main() {
    let mut bulk = 0usize;
    let mut tenant_file: Option<String> = None;
    let mut listen = "127.0.0.1:0".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--bulk" => {
                bulk = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--tenant" => tenant_file = Some(args.next().unwrap_or_else(|| usage())),
            "--listen" => listen = args.next().unwrap_or_else(|| usage()),
            "-h" | "--help" => usage(),
            _ => usage(),
        }
    }
    let tenant = match tenant_file {
        Some(path) => {
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
                eprintln!("graph-standin: {path}: {e}");
                std::process::exit(1);
            });
            Tenant::from_json(&text).unwrap_or_else(|e| {
                eprintln!("graph-standin: {path}: {e}");
                std::process::exit(1);
            })
        }
        None => Tenant::fixture(),
    };
    let tenant = if bulk > 0 {
        tenant.with_bulk_users(bulk)
    } else {
        tenant
    };
    let standin = StandIn::start_on(tenant, &listen).unwrap_or_else(|e| {
        eprintln!("graph-standin: listen on {listen}: {e}");
        std::process::exit(1);
    });
    let line = serde_json::json!({
        "authority_url": standin.authority_url,
        "graph_url": standin.graph_url,
        "tenant_id": standin.tenant_id,
        "client_id": standin.client_id,
        "client_secret": standin.client_secret,
    });
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
    drop(out);
    loop {
        std::thread::park();
    }
}
