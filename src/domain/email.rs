//! Email addresses as admins type them into device maps and as directories
//! return them: syntax checked, display form kept, compared case-insensitively.

use std::borrow::Cow;
use std::hash::{Hash, Hasher};

use serde::{Deserialize, Serialize};

use super::FieldError;

const FIELD: &str = "email";
/// RFC 5321 limits: 64 octets for the local part, 254 for a usable path.
const MAX_LOCAL: usize = 64;
const MAX_TOTAL: usize = 254;
const MAX_LABEL: usize = 63;
/// RFC 5322 `atext` punctuation allowed in an unquoted local part.
const LOCAL_PUNCT: &str = "!#$%&'*+-/=?^_`{|}~";

/// The one case normalisation for everything that names a user: email
/// addresses (mappings, users, the UPN and email a client reports, admin
/// filters) and login names. Trims, then lowercases the whole string with
/// Unicode's full lowercase mapping (`str::to_lowercase`), so `ÖZIL@Corp.com`
/// and `özil@corp.com` are one user. The domain part of a valid `Email` is
/// ASCII, so this is plain ASCII lowercasing there. Borrows when the input is
/// already normal, the common case.
pub fn normalize_email(s: &str) -> Cow<'_, str> {
    let s = s.trim();
    let unchanged = if s.is_ascii() {
        !s.bytes().any(|b| b.is_ascii_uppercase())
    } else {
        // Not `char::is_uppercase`: titlecase letters such as 'ǅ' lowercase too.
        s.chars().all(|c| {
            let mut lower = c.to_lowercase();
            lower.next() == Some(c) && lower.next().is_none()
        })
    };
    if unchanged {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(s.to_lowercase())
    }
}

/// A syntactically valid email address. Equality and hashing use the
/// lowercase form: directories and admins disagree on case, and treating
/// `John.Doe@Example.com` and `john.doe@example.com` as two users would
/// split one person's devices.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Email {
    display: String,
    /// `None` when the display form is already lowercase (the common case),
    /// which saves an allocation per device map row.
    lower: Option<String>,
}

impl Email {
    /// Trims, then checks: no whitespace or control characters, exactly one
    /// `@`, a dot-atom local part of 1..=64 octets, a domain of at least two
    /// labels of letters, digits and inner hyphens, and 254 octets in all.
    /// Quoted local parts and address literals are not accepted: no
    /// directory imd talks to issues them.
    pub fn parse(s: &str) -> Result<Email, FieldError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(err("missing value"));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(err(
                "not a valid email address (contains whitespace or control characters)",
            ));
        }
        if s.len() > MAX_TOTAL {
            return Err(err(format!(
                "not a valid email address (longer than {MAX_TOTAL} characters)"
            )));
        }
        let (local, domain) = match s.split_once('@') {
            None => return Err(err("not a valid email address (missing '@')")),
            Some((_, d)) if d.contains('@') => {
                return Err(err("not a valid email address (more than one '@')"));
            }
            Some(parts) => parts,
        };
        check_local(local)?;
        check_domain(domain)?;
        let lower = match normalize_email(s) {
            Cow::Borrowed(_) => None,
            Cow::Owned(lower) => Some(lower),
        };
        Ok(Email {
            display: s.to_owned(),
            lower,
        })
    }

    /// The address as given (trimmed), for display and outgoing mail.
    pub fn as_str(&self) -> &str {
        &self.display
    }

    /// The lowercase form (`normalize_email`) used for comparison, lookups
    /// and the stored `email_norm`.
    pub fn normalized(&self) -> &str {
        self.lower.as_deref().unwrap_or(&self.display)
    }
}

fn err(message: impl Into<String>) -> FieldError {
    FieldError::new(FIELD, message)
}

fn check_local(local: &str) -> Result<(), FieldError> {
    if local.is_empty() {
        return Err(err("not a valid email address (nothing before '@')"));
    }
    if local.len() > MAX_LOCAL {
        return Err(err(format!(
            "not a valid email address (the part before '@' is longer than {MAX_LOCAL} characters)"
        )));
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err(err("not a valid email address (misplaced '.' before '@')"));
    }
    // Non-ASCII letters are allowed (SMTPUTF8 mailboxes exist in the wild);
    // ASCII is limited to the unquoted atext set.
    if let Some(c) = local.chars().find(|&c| {
        !(c.is_ascii_alphanumeric()
            || c == '.'
            || LOCAL_PUNCT.contains(c)
            || (!c.is_ascii() && c.is_alphanumeric()))
    }) {
        return Err(err(format!(
            "not a valid email address (character '{c}' is not allowed before '@')"
        )));
    }
    Ok(())
}

fn check_domain(domain: &str) -> Result<(), FieldError> {
    if domain.is_empty() {
        return Err(err("not a valid email address (nothing after '@')"));
    }
    if !domain.contains('.') {
        return Err(err(format!(
            "not a valid email address (domain \"{domain}\" has no '.')"
        )));
    }
    for label in domain.split('.') {
        let ok = !label.is_empty()
            && label.len() <= MAX_LABEL
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !ok {
            return Err(err(format!(
                "not a valid email address (invalid domain \"{domain}\")"
            )));
        }
    }
    Ok(())
}

impl PartialEq for Email {
    fn eq(&self, other: &Self) -> bool {
        self.normalized() == other.normalized()
    }
}

impl Eq for Email {}

impl Hash for Email {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.normalized().hash(state);
    }
}

impl std::fmt::Display for Email {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display)
    }
}

impl TryFrom<String> for Email {
    type Error = FieldError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Email::parse(&s)
    }
}

impl From<Email> for String {
    fn from(e: Email) -> String {
        e.display
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn parse_accepts_common_addresses_and_trims() {
        for s in [
            "a@b.co",
            "john.doe@example.com",
            "first+tag@mail.example.co.uk",
            "o'brien@example.ie",
            "x_y-z@sub-domain.example.com",
            "josé@example.es",
        ] {
            assert!(Email::parse(s).is_ok(), "{s} should be valid");
        }
        let e = Email::parse("  John@Example.com\t").unwrap();
        assert_eq!(e.as_str(), "John@Example.com");
    }

    #[test]
    fn parse_keeps_display_form_and_compares_lowercase() {
        let a = Email::parse("John.Doe@Example.COM").unwrap();
        let b = Email::parse("john.doe@example.com").unwrap();
        assert_eq!(a.as_str(), "John.Doe@Example.COM");
        assert_eq!(a.normalized(), "john.doe@example.com");
        assert_eq!(b.normalized(), b.as_str());
        assert_eq!(a, b);
        let set: HashSet<Email> = [a, b].into_iter().collect();
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn parse_rejects_bad_syntax_with_field_email() {
        for s in [
            "",
            "   ",
            "plainaddress",
            "@example.com",
            "user@",
            "user@@example.com",
            "a@b@example.com",
            "user@localhost",
            "user name@example.com",
            "user@exa mple.com",
            "user\u{7}@example.com",
            ".user@example.com",
            "user.@example.com",
            "us..er@example.com",
            "user@-example.com",
            "user@example-.com",
            "user@example..com",
            "user@example.com.",
            "user@exam_ple.com",
            "\"quoted\"@example.com",
            "user,x@example.com",
            "<user@example.com>",
        ] {
            let e = Email::parse(s).expect_err(s);
            assert_eq!(e.field, "email");
        }
    }

    #[test]
    fn parse_enforces_length_limits() {
        let local64 = "a".repeat(64);
        assert!(Email::parse(&format!("{local64}@example.com")).is_ok());
        let local65 = "a".repeat(65);
        assert!(Email::parse(&format!("{local65}@example.com")).is_err());

        let label63 = "b".repeat(63);
        assert!(Email::parse(&format!("a@{label63}.com")).is_ok());
        let label64 = "b".repeat(64);
        assert!(Email::parse(&format!("a@{label64}.com")).is_err());

        // 64 + 1 + 189 = 254 octets is the longest usable address.
        let domain = format!(
            "{}.{}.{}.com",
            "c".repeat(60),
            "d".repeat(60),
            "e".repeat(63)
        );
        let ok = format!("{local64}@{domain}");
        assert_eq!(ok.len(), 254);
        assert!(Email::parse(&ok).is_ok());
        let too_long = format!("{local64}@x{domain}");
        assert!(Email::parse(&too_long).unwrap_err().message.contains("254"));
    }

    #[test]
    fn normalize_email_lowercases_unicode_and_borrows_when_already_normal() {
        assert_eq!(
            normalize_email("ÖZIL@corp.example.com"),
            "özil@corp.example.com"
        );
        assert_eq!(
            normalize_email(" Özil@Corp.Example.COM "),
            "özil@corp.example.com"
        );
        assert_eq!(normalize_email("JOSÉ@EXAMPLE.ES"), "josé@example.es");
        assert_eq!(normalize_email("ДМИТРИЙ@example.ru"), "дмитрий@example.ru");
        assert!(matches!(
            normalize_email(" özil@corp.example.com"),
            Cow::Borrowed("özil@corp.example.com")
        ));
        assert!(matches!(
            normalize_email("ann@example.com"),
            Cow::Borrowed(_)
        ));
        assert!(matches!(normalize_email("Ann@example.com"), Cow::Owned(_)));
        // Titlecase, not uppercase, and still not in lowercase form.
        assert_eq!(normalize_email("ǅemal@example.com"), "ǆemal@example.com");
    }

    #[test]
    fn non_ascii_addresses_differing_in_case_are_one_email() {
        let mapped = Email::parse("Özil@corp.example.com").unwrap();
        let reported = Email::parse("ÖZIL@CORP.EXAMPLE.COM").unwrap();
        assert_eq!(mapped.as_str(), "Özil@corp.example.com");
        assert_eq!(mapped.normalized(), "özil@corp.example.com");
        assert_eq!(mapped, reported);
        assert_eq!(mapped.normalized(), normalize_email(reported.as_str()));
        let title = Email::parse("ǅemal@example.com").unwrap();
        assert_eq!(title.normalized(), "ǆemal@example.com");
        assert_eq!(title, Email::parse("ǆemal@example.com").unwrap());
    }

    #[test]
    fn serde_round_trips_through_the_display_form() {
        let e = Email::parse("Ann@Example.com").unwrap();
        assert_eq!(serde_json::to_string(&e).unwrap(), "\"Ann@Example.com\"");
        let back: Email = serde_json::from_str("\"Ann@Example.com\"").unwrap();
        assert_eq!(back.as_str(), "Ann@Example.com");
        assert!(serde_json::from_str::<Email>("\"not-an-email\"").is_err());
    }
}
