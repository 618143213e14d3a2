//! The activation request as it arrives (`RawActivation`) and as the pipeline uses it
//! (`ActivationRequest`, parsed and normalized). Unknown fields are tolerated so that newer
//! clients keep working against older servers.

use serde::Deserialize;

use super::{DeviceIdentifiers, normalize_email};

pub const MAX_TOKEN_LEN: usize = 8 * 1024;
const MAX_FIELD_LEN: usize = 255;
const MIN_INSTALL_KEY_LEN: usize = 16;
const MAX_INSTALL_KEY_LEN: usize = 2048;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct RawActivation {
    pub token: Option<String>,
    pub device: Option<RawDevice>,
    pub user: Option<RawUser>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
pub struct RawDevice {
    pub hostname: Option<String>,
    pub serial: Option<String>,
    pub uuid: Option<String>,
    pub os: Option<String>,
    pub os_version: Option<String>,
    pub client_version: Option<String>,
    pub install_key: Option<String>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
pub struct RawUser {
    pub login: Option<String>,
    pub domain: Option<String>,
    pub upn: Option<String>,
    pub email: Option<String>,
}

/// The signed-in user as the client reports it (trimmed, empty → None).
#[derive(Debug, Clone, Default)]
pub struct ReportedUser {
    pub login: Option<String>,
    pub domain: Option<String>,
    pub upn: Option<String>,
    pub email: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ActivationRequest {
    pub token: String,
    pub ids: DeviceIdentifiers,
    pub hostname: Option<String>,
    pub serial: Option<String>,
    pub uuid: Option<String>,
    pub os: Option<String>,
    pub os_version: Option<String>,
    pub client_version: Option<String>,
    pub install_key: Option<String>,
    pub user: ReportedUser,
}

fn field(name: &str, v: Option<String>, max: usize) -> Result<Option<String>, String> {
    let Some(v) = v else { return Ok(None) };
    let v = v.trim().to_string();
    if v.is_empty() {
        return Ok(None);
    }
    if v.chars().count() > max {
        return Err(format!("{name} is longer than {max} characters"));
    }
    if v.chars().any(char::is_control) {
        return Err(format!("{name} contains control characters"));
    }
    Ok(Some(v))
}

impl ActivationRequest {
    pub fn parse(raw: RawActivation) -> Result<ActivationRequest, String> {
        let token = raw
            .token
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .ok_or("token is required")?;
        if token.len() > MAX_TOKEN_LEN {
            return Err(format!("token is longer than {MAX_TOKEN_LEN} bytes"));
        }
        let d = raw.device.ok_or("device is required")?;
        let hostname = field("device.hostname", d.hostname, MAX_FIELD_LEN)?;
        let serial = field("device.serial", d.serial, MAX_FIELD_LEN)?;
        let uuid = field("device.uuid", d.uuid, MAX_FIELD_LEN)?;
        let ids =
            DeviceIdentifiers::from_raw(hostname.as_deref(), serial.as_deref(), uuid.as_deref())
                .map_err(|e| e.to_string())?;
        let install_key = field("device.install_key", d.install_key, MAX_INSTALL_KEY_LEN)?;
        if let Some(k) = &install_key
            && k.len() < MIN_INSTALL_KEY_LEN
        {
            return Err(format!(
                "device.install_key must be at least {MIN_INSTALL_KEY_LEN} characters"
            ));
        }
        let u = raw.user.ok_or("user is required")?;
        let user = ReportedUser {
            login: field("user.login", u.login, MAX_FIELD_LEN)?,
            domain: field("user.domain", u.domain, MAX_FIELD_LEN)?,
            upn: field("user.upn", u.upn, MAX_FIELD_LEN)?,
            email: field("user.email", u.email, MAX_FIELD_LEN)?,
        };
        if user.login.is_none() && user.upn.is_none() && user.email.is_none() {
            return Err("user needs at least one of login, upn or email".into());
        }
        Ok(ActivationRequest {
            token,
            ids,
            hostname,
            serial,
            uuid,
            os: field("device.os", d.os, 64)?,
            os_version: field("device.os_version", d.os_version, 128)?,
            client_version: field("device.client_version", d.client_version, 64)?,
            install_key,
            user,
        })
    }
}

/// `CORP\jdoe`, `jdoe@corp.example.com` and `JDoe` all name the login `jdoe`: the part after any
/// `DOMAIN\` and before any `@`, normalised like an email (`normalize_email`).
pub fn login_key(s: &str) -> String {
    let s = s.trim();
    let s = s.rsplit('\\').next().unwrap_or(s);
    let s = s.split('@').next().unwrap_or(s);
    normalize_email(s).into_owned()
}

impl ReportedUser {
    /// Whether the reported user is the directory/mapping user with this email and user name.
    /// Emails compare after `normalize_email` on both sides (the stored `email_norm` already is).
    pub fn matches(&self, email_norm: &str, user_name: &str) -> bool {
        let email_norm = normalize_email(email_norm);
        let email_hit = [&self.email, &self.upn]
            .into_iter()
            .flatten()
            .any(|e| normalize_email(e) == email_norm);
        let login_hit = self.login.as_deref().is_some_and(|l| {
            let l = login_key(l);
            l == login_key(user_name) || l == login_key(&email_norm)
        });
        email_hit || login_hit
    }

    /// For the audit trail.
    pub fn display(&self) -> Option<String> {
        match (&self.domain, &self.login) {
            (Some(d), Some(l)) => Some(format!("{d}\\{l}")),
            (None, Some(l)) => Some(l.clone()),
            _ => self.upn.clone().or_else(|| self.email.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logins_match_across_domain_and_upn_forms() {
        let u = ReportedUser {
            login: Some("CORP\\JDoe".into()),
            ..Default::default()
        };
        assert!(u.matches("jdoe@corp.example.com", "jdoe"));
        assert!(u.matches("john@corp.example.com", "CORP\\jdoe"));
        assert!(!u.matches("john@corp.example.com", "john"));
        let u = ReportedUser {
            upn: Some("JDoe@Corp.Example.com".into()),
            ..Default::default()
        };
        assert!(u.matches("jdoe@corp.example.com", "someone"));
    }

    #[test]
    fn non_ascii_emails_match_in_any_case_like_the_stored_normal_form() {
        let stored = crate::domain::Email::parse("Özil@corp.example.com").unwrap();
        for (upn, email) in [
            (Some("ÖZIL@corp.example.com"), None),
            (None, Some("ÖZIL@CORP.EXAMPLE.COM")),
            (Some(" özil@Corp.Example.com "), None),
        ] {
            let u = ReportedUser {
                upn: upn.map(Into::into),
                email: email.map(Into::into),
                ..Default::default()
            };
            assert!(u.matches(stored.normalized(), "mesut"), "{upn:?} {email:?}");
            // Whatever form the caller passes in.
            assert!(u.matches(stored.as_str(), "mesut"), "{upn:?} {email:?}");
        }
        let other = ReportedUser {
            upn: Some("OZIL@corp.example.com".into()),
            ..Default::default()
        };
        assert!(!other.matches(stored.normalized(), "mesut"));
    }

    #[test]
    fn non_ascii_logins_match_in_any_case() {
        let u = ReportedUser {
            login: Some("CORP\\ÖZIL".into()),
            ..Default::default()
        };
        assert!(u.matches("someone@corp.example.com", "özil"));
        assert!(u.matches("özil@corp.example.com", "mesut"));
        assert_eq!(login_key("ǅemal@corp.example.com"), "ǆemal");
    }
}
