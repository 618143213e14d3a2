//! What the client reports about this machine and its user. Collection is per OS behind
//! `cfg(target_os)`; the text parsers are plain functions so they are unit-tested on every OS
//! with sample outputs. Anything that cannot be read (DMI needs root on many distributions) is
//! simply absent: the server needs only one usable identifier.

use std::process::Command;

use clap::Args;
use serde::Serialize;

/// Values that replace what the client would detect (for tests, and for IT to try a mapping).
/// An empty value (`--uuid=`) sends nothing for that field.
#[derive(Debug, Args, Clone, Default)]
pub struct Overrides {
    /// Report this hostname instead of the detected one.
    #[arg(long)]
    pub hostname: Option<String>,
    /// Report this serial number instead of the firmware's.
    #[arg(long)]
    pub serial: Option<String>,
    /// Report this hardware UUID instead of the firmware's.
    #[arg(long)]
    pub uuid: Option<String>,
    /// Report this login instead of the signed-in user's.
    #[arg(long)]
    pub login: Option<String>,
    /// Report this domain (Windows: USERDOMAIN by default).
    #[arg(long)]
    pub domain: Option<String>,
    /// Report this user principal name (Windows: `whoami /upn` by default).
    #[arg(long)]
    pub upn: Option<String>,
    /// Report this email address (not detected).
    #[arg(long)]
    pub email: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Device {
    pub hostname: Option<String>,
    pub serial: Option<String>,
    pub uuid: Option<String>,
    pub os: Option<String>,
    pub os_version: Option<String>,
    pub client_version: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct User {
    pub login: Option<String>,
    pub domain: Option<String>,
    pub upn: Option<String>,
    pub email: Option<String>,
}

/// Collects everything, then applies the overrides. Overridden values are not probed, so a
/// fully overridden run starts no helper processes.
pub fn collect(o: &Overrides) -> (Device, User) {
    let pick = |over: &Option<String>, detect: &dyn Fn() -> Option<String>| match over {
        Some(v) => clean(v),
        None => detect(),
    };
    // Skipped when both are overridden: on Windows it costs a PowerShell start.
    let (fw_serial, fw_uuid) = if o.serial.is_none() || o.uuid.is_none() {
        firmware_ids()
    } else {
        (None, None)
    };
    let (os_name, os_version) = os_info();
    let device = Device {
        hostname: pick(&o.hostname, &hostname),
        serial: pick(&o.serial, &|| fw_serial.clone()),
        uuid: pick(&o.uuid, &|| fw_uuid.clone()),
        os: Some(os_name),
        os_version,
        client_version: Some(env!("CARGO_PKG_VERSION").to_string()),
    };
    let mut user = User {
        login: pick(&o.login, &login),
        domain: pick(&o.domain, &domain),
        upn: pick(&o.upn, &upn),
        email: o.email.as_deref().and_then(clean),
    };
    // Run as SYSTEM/root (the GPO scheduled task, an MDM policy), the process's own account
    // is not the person the device belongs to: report who is signed in at the console instead,
    // or nobody (the caller then retries later rather than activating for the wrong account).
    if o.login.is_none() && user.login.as_deref().is_none_or(is_service_account) {
        let (console_domain, console_login) = console_user().map_or((None, None), split_account);
        user.login = console_login;
        if o.domain.is_none() {
            user.domain = console_domain;
        }
        if o.upn.is_none() {
            // `whoami /upn` describes the service account, not the console user.
            user.upn = None;
        }
    }
    (device, user)
}

/// Accounts that run services rather than belong to a person.
pub fn is_service_account(login: &str) -> bool {
    let l = login.trim();
    l.ends_with('$')
        || [
            "SYSTEM",
            "LOCAL SERVICE",
            "NETWORK SERVICE",
            "root",
            "_mbsetupuser",
        ]
        .iter()
        .any(|s| l.eq_ignore_ascii_case(s))
}

/// `DOMAIN\user` → (Some(DOMAIN), Some(user)); `user` → (None, Some(user)); a service account
/// at the console (nobody really signed in) → (None, None).
pub fn split_account(account: String) -> (Option<String>, Option<String>) {
    let (domain, login) = match account.rsplit_once('\\') {
        Some((d, u)) => (clean(d), clean(u)),
        None => (None, clean(&account)),
    };
    match login {
        Some(u) if !is_service_account(&u) => (domain, Some(u)),
        _ => (None, None),
    }
}

/// The first user column of `who` output that is a person.
pub fn parse_who(out: &str) -> Option<String> {
    out.lines()
        .filter_map(|l| l.split_whitespace().next())
        .find(|u| !is_service_account(u))
        .map(str::to_string)
}

/// Who is signed in at the console.
fn console_user() -> Option<String> {
    #[cfg(windows)]
    return run(
        "powershell",
        &[
            "-NoProfile",
            "-NonInteractive",
            "-Command",
            "(Get-CimInstance Win32_ComputerSystem).UserName",
        ],
    )
    .and_then(|u| clean(&u));
    #[cfg(target_os = "macos")]
    return run("stat", &["-f", "%Su", "/dev/console"]).and_then(|u| clean(&u));
    #[cfg(not(any(windows, target_os = "macos")))]
    return env_var("SUDO_USER").or_else(|| run("who", &[]).and_then(|o| parse_who(&o)));
}

fn clean(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

/// Runs a helper program; its stdout if it exited 0. Missing programs are just "unknown".
#[allow(dead_code)] // unused on Linux when every probe reads files
fn run(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().and_then(|v| clean(&v))
}

fn hostname() -> Option<String> {
    #[cfg(target_os = "linux")]
    if let Some(h) = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .and_then(|h| clean(&h))
    {
        return Some(h);
    }
    #[cfg(windows)]
    if let Some(h) = env_var("COMPUTERNAME") {
        return Some(h);
    }
    run("hostname", &[]).and_then(|h| clean(&h))
}

/// (serial, hardware UUID) from the firmware.
#[cfg(target_os = "linux")]
fn firmware_ids() -> (Option<String>, Option<String>) {
    // Readable by root only on most distributions: an unprivileged run reports neither.
    let read = |p: &str| std::fs::read_to_string(p).ok().and_then(|s| clean(&s));
    (
        read("/sys/class/dmi/id/product_serial"),
        read("/sys/class/dmi/id/product_uuid"),
    )
}

#[cfg(target_os = "macos")]
fn firmware_ids() -> (Option<String>, Option<String>) {
    run("ioreg", &["-rd1", "-c", "IOPlatformExpertDevice"])
        .map(|o| parse_ioreg(&o))
        .unwrap_or_default()
}

#[cfg(windows)]
fn firmware_ids() -> (Option<String>, Option<String>) {
    // One PowerShell start (slow: ~1 s) for both values.
    run(
        "powershell",
        &[
            "-NoProfile",
            "-NonInteractive",
            "-Command",
            "'serial=' + (Get-CimInstance Win32_BIOS).SerialNumber; \
             'uuid=' + (Get-CimInstance Win32_ComputerSystemProduct).UUID",
        ],
    )
    .map(|o| parse_powershell_ids(&o))
    .unwrap_or_default()
}

#[cfg(not(any(target_os = "linux", target_os = "macos", windows)))]
fn firmware_ids() -> (Option<String>, Option<String>) {
    (None, None)
}

/// (os, os_version): `os` is the platform (`linux`, `macos`, `windows`), `os_version` the
/// distribution or release as the OS names it.
fn os_info() -> (String, Option<String>) {
    let os = std::env::consts::OS.to_string();
    #[cfg(target_os = "linux")]
    let version = std::fs::read_to_string("/etc/os-release")
        .or_else(|_| std::fs::read_to_string("/usr/lib/os-release"))
        .ok()
        .and_then(|s| parse_os_release(&s));
    #[cfg(target_os = "macos")]
    let version = run("sw_vers", &["-productVersion"]).and_then(|v| clean(&v));
    #[cfg(windows)]
    let version = run("cmd", &["/C", "ver"]).and_then(|v| parse_windows_ver(&v));
    #[cfg(not(any(target_os = "linux", target_os = "macos", windows)))]
    let version = None;
    (os, version)
}

fn login() -> Option<String> {
    env_var("USER")
        .or_else(|| env_var("USERNAME"))
        .or_else(|| env_var("LOGNAME"))
        .or_else(|| run("whoami", &[]).and_then(|w| clean(&w)))
        // `whoami` on Windows says DOMAIN\user; the domain is reported separately.
        .map(|l| l.rsplit('\\').next().unwrap_or(&l).to_string())
}

fn domain() -> Option<String> {
    #[cfg(windows)]
    return env_var("USERDOMAIN");
    #[cfg(not(windows))]
    None
}

fn upn() -> Option<String> {
    // Best effort: fails for local accounts and off-domain machines, which is fine.
    #[cfg(windows)]
    return run("whoami", &["/upn"])
        .and_then(|u| clean(&u))
        .filter(|u| u.contains('@'));
    #[cfg(not(windows))]
    None
}

/// `"IOPlatformSerialNumber" = "C02XK0ZZJGH5"` and `"IOPlatformUUID" = "…"` from
/// `ioreg -rd1 -c IOPlatformExpertDevice`.
pub fn parse_ioreg(out: &str) -> (Option<String>, Option<String>) {
    let value = |key: &str| {
        let quoted = format!("\"{key}\"");
        out.lines().find_map(|l| {
            let rest = l
                .trim()
                .strip_prefix(&quoted)?
                .trim_start()
                .strip_prefix('=')?;
            clean(rest.trim().trim_matches('"'))
        })
    };
    (value("IOPlatformSerialNumber"), value("IOPlatformUUID"))
}

/// The `serial=…` / `uuid=…` lines our PowerShell command prints.
pub fn parse_powershell_ids(out: &str) -> (Option<String>, Option<String>) {
    let value = |key: &str| {
        out.lines().find_map(|l| {
            l.trim()
                .strip_prefix(key)?
                .strip_prefix('=')
                .and_then(clean)
        })
    };
    (value("serial"), value("uuid"))
}

/// PRETTY_NAME (e.g. `Debian GNU/Linux 12 (bookworm)`), else `NAME VERSION_ID`.
pub fn parse_os_release(s: &str) -> Option<String> {
    let get = |key: &str| {
        s.lines().find_map(|l| {
            let v = l.trim().strip_prefix(key)?.strip_prefix('=')?;
            clean(v.trim().trim_matches('"').trim_matches('\''))
        })
    };
    get("PRETTY_NAME").or_else(|| match (get("NAME"), get("VERSION_ID")) {
        (Some(n), Some(v)) => Some(format!("{n} {v}")),
        (n, v) => n.or(v),
    })
}

/// `Microsoft Windows [Version 10.0.22631.3007]` → `10.0.22631.3007`.
pub fn parse_windows_ver(s: &str) -> Option<String> {
    let start = s.find("[Version ")? + "[Version ".len();
    let end = s[start..].find(']')? + start;
    clean(&s[start..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    const IOREG: &str = r#"+-o J314sAP  <class IOPlatformExpertDevice, id 0x100000229, registered, matched, active, busy 0 (120 ms), retain 38>
    {
      "IOPolledInterface" = "AppleARMPollingInterface is not serializable"
      "compatible" = <"J314sAP","MacBookPro18,3","AppleARM">
      "IOPlatformUUID" = "2C9E8A2B-1F1E-5B5E-9C3B-1A2B3C4D5E6F"
      "IOPlatformSerialNumber" = "C02XK0ZZJGH5"
      "model" = <"MacBookPro18,3">
    }
"#;

    #[test]
    fn ioreg_output_gives_serial_and_uuid() {
        assert_eq!(
            parse_ioreg(IOREG),
            (
                Some("C02XK0ZZJGH5".into()),
                Some("2C9E8A2B-1F1E-5B5E-9C3B-1A2B3C4D5E6F".into())
            )
        );
        assert_eq!(parse_ioreg("nothing here"), (None, None));
    }

    #[test]
    fn powershell_output_gives_serial_and_uuid_and_blank_is_absent() {
        let out = "serial=5CG1234XYZ\r\nuuid=4C4C4544-0042-3510-8052-B4C04F564433\r\n";
        assert_eq!(
            parse_powershell_ids(out),
            (
                Some("5CG1234XYZ".into()),
                Some("4C4C4544-0042-3510-8052-B4C04F564433".into())
            )
        );
        // A VM without a BIOS serial prints an empty value.
        assert_eq!(parse_powershell_ids("serial=\r\nuuid= \r\n"), (None, None));
    }

    #[test]
    fn os_release_prefers_pretty_name() {
        let debian = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\n";
        assert_eq!(
            parse_os_release(debian).as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(
            parse_os_release("NAME=Alpine\nVERSION_ID=3.20.1\n").as_deref(),
            Some("Alpine 3.20.1")
        );
        assert_eq!(parse_os_release("# nothing\n"), None);
    }

    #[test]
    fn windows_ver_gives_the_build() {
        assert_eq!(
            parse_windows_ver("\r\nMicrosoft Windows [Version 10.0.22631.3007]\r\n").as_deref(),
            Some("10.0.22631.3007")
        );
        assert_eq!(parse_windows_ver("garbage"), None);
    }

    #[test]
    fn service_accounts_are_recognised_and_console_accounts_split() {
        for a in [
            "SYSTEM",
            "system",
            "WS-0042$",
            "root",
            "NETWORK SERVICE",
            "_mbsetupuser",
        ] {
            assert!(is_service_account(a), "{a}");
        }
        assert!(!is_service_account("jdoe"));
        assert_eq!(
            split_account("CORP\\jdoe".into()),
            (Some("CORP".into()), Some("jdoe".into()))
        );
        assert_eq!(split_account("jdoe".into()), (None, Some("jdoe".into())));
        assert_eq!(split_account("NT AUTHORITY\\SYSTEM".into()), (None, None));
        assert_eq!(
            parse_who("root     tty1  2026-11-22 01:00\njdoe     :0    2026-11-22 01:02 (:0)\n"),
            Some("jdoe".into())
        );
        assert_eq!(parse_who(""), None);
    }

    #[test]
    fn overrides_win_and_empty_means_absent() {
        let o = Overrides {
            hostname: Some("WS-1".into()),
            serial: Some(" S1 ".into()),
            uuid: Some(String::new()),
            login: Some("jdoe".into()),
            domain: Some("CORP".into()),
            upn: Some(String::new()),
            email: None,
        };
        let (d, u) = collect(&o);
        assert_eq!(d.hostname.as_deref(), Some("WS-1"));
        assert_eq!(d.serial.as_deref(), Some("S1"));
        assert_eq!(d.uuid, None);
        assert_eq!(d.client_version.as_deref(), Some(env!("CARGO_PKG_VERSION")));
        assert_eq!(u.login.as_deref(), Some("jdoe"));
        assert_eq!(u.domain.as_deref(), Some("CORP"));
        assert_eq!(u.upn, None);
    }
}
