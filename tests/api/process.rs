//! The real `imd serve` as a child process (for what only a process shows: its logs, its
//! signals, its exit), with everything it prints captured.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

pub struct Served {
    pub child: Child,
    /// `127.0.0.1:port`
    pub addr: String,
    /// Every byte of stdout and stderr so far.
    pub output: Arc<Mutex<Vec<u8>>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

/// The imd binary with a clean environment for it: no inherited IMD_* settings or secrets.
pub fn imd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_imd"));
    for (k, _) in std::env::vars() {
        if k.starts_with("IMD_") || k == "RUST_LOG" {
            c.env_remove(k);
        }
    }
    c.kill_on_drop(true);
    c
}

/// `imd serve` on 127.0.0.1:0 in `dir` (on the suite's database) with `env`; returns once it
/// printed its address.
pub async fn serve(dir: &std::path::Path, env: &[(&str, &str)]) -> Served {
    let mut c = imd();
    c.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env("IMD_SYNC__SCHEDULER", "false")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if let Some(url) = crate::helpers::database_url_of(dir) {
        c.arg("--database-url").arg(url);
    }
    let mut child = c.spawn().expect("imd starts");
    let output = Arc::new(Mutex::new(Vec::new()));
    let mut stderr = child.stderr.take().unwrap();
    let out = output.clone();
    let err_reader = tokio::spawn(async move {
        let mut buf = [0u8; 8192];
        while let Ok(n) = stderr.read(&mut buf).await {
            if n == 0 {
                break;
            }
            out.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    let out = output.clone();
    let out_reader = tokio::spawn(async move {
        let mut addr_tx = Some(addr_tx);
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(rest) = line.strip_prefix("imd listening on ")
                && let Some(tx) = addr_tx.take()
            {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
            }
            let mut o = out.lock().unwrap();
            o.extend_from_slice(line.as_bytes());
            o.push(b'\n');
        }
    });
    let addr = match tokio::time::timeout(Duration::from_secs(60), addr_rx).await {
        Ok(Ok(a)) => a,
        _ => panic!(
            "imd serve did not print its address:\n{}",
            String::from_utf8_lossy(&output.lock().unwrap())
        ),
    };
    Served {
        child,
        addr,
        output,
        readers: vec![err_reader, out_reader],
    }
}

impl Served {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn sigterm(&self) {
        let pid = self.child.id().expect("still running");
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM {pid}");
    }

    /// Waits for the exit (at most `within`) and returns its status with everything printed.
    pub async fn wait(mut self, within: Duration) -> (std::process::ExitStatus, String) {
        let status = match tokio::time::timeout(within, self.child.wait()).await {
            Ok(s) => s.unwrap(),
            Err(_) => {
                let _ = self.child.kill().await;
                panic!(
                    "imd did not exit within {within:?}:\n{}",
                    String::from_utf8_lossy(&self.output.lock().unwrap())
                );
            }
        };
        for r in self.readers {
            let _ = r.await;
        }
        let out = String::from_utf8_lossy(&self.output.lock().unwrap()).to_string();
        (status, out)
    }
}
