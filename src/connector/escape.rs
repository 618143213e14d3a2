//! Pure helpers for talking LDAP safely: filter and DN escaping, filter syntax checks, DN
//! comparison, and decoding of AD's binary and numeric values (objectGUID, objectSid,
//! FILETIME, generalized time, bind diagnostics). No I/O here, so all of it is unit-tested.

use std::fmt::Write as _;

use crate::connector::proto::PasswordVerdict;

/// RFC 4515 §3 escaping of one assertion value: `* ( ) \ NUL` and, so nothing odd reaches a
/// server log, every other ASCII control byte. Non-ASCII UTF-8 is legal as is.
pub fn filter_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        match c {
            '*' | '(' | ')' | '\\' | '\0' => push_hex(&mut out, c as u8),
            c if c.is_ascii_control() => push_hex(&mut out, c as u8),
            c => out.push(c),
        }
    }
    out
}

/// Every byte as `\xx`: for binary values such as an objectGUID's wire form.
pub fn filter_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for b in bytes {
        push_hex(&mut out, *b);
    }
    out
}

fn push_hex(out: &mut String, b: u8) {
    let _ = write!(out, "\\{b:02x}");
}

/// RFC 4514 §2.4 escaping of one RDN attribute value (never a whole DN).
pub fn dn_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 4);
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' | '=' => {
                out.push('\\');
                out.push(c);
            }
            '\0' => out.push_str("\\00"),
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            c => out.push(c),
        }
    }
    out
}

/// Checks that `filter` is exactly one parenthesised RFC 4515 filter, so ANDing it into a
/// larger filter cannot change that filter's structure (`(a=b))(|(c=*)` is refused).
pub fn check_filter(filter: &str) -> Result<(), String> {
    let f = filter.trim();
    if f.is_empty() {
        return Err("empty filter".into());
    }
    if !f.starts_with('(') || !f.ends_with(')') {
        return Err("a filter must be enclosed in parentheses".into());
    }
    // Literal parentheses in values are always escaped (\28 \29), so every '(' and ')' here is
    // structural; a backslash escapes the next two hex digits.
    let bytes = f.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => {
                let ok = i + 2 < bytes.len()
                    && bytes[i + 1].is_ascii_hexdigit()
                    && bytes[i + 2].is_ascii_hexdigit();
                if !ok {
                    return Err(format!("bad escape at byte {i}"));
                }
                i += 3;
                continue;
            }
            b'(' => depth += 1,
            b')' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| format!("unbalanced ')' at byte {i}"))?;
                if depth == 0 && i != bytes.len() - 1 {
                    return Err(format!("text after the filter's end at byte {}", i + 1));
                }
            }
            _ => {}
        }
        i += 1;
    }
    if depth != 0 {
        return Err("unbalanced '('".into());
    }
    ldap3::parse_filter(f).map_err(|()| "not a valid LDAP filter".to_string())?;
    Ok(())
}

/// Splits a DN into its RDNs at unescaped commas, each trimmed (DNs from servers are used
/// verbatim; this is only for comparing them).
pub fn split_dn(dn: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let bytes = dn.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b',' => {
                parts.push(dn[start..i].trim());
                start = i + 1;
                i += 1;
            }
            _ => i += 1,
        }
    }
    if start <= dn.len() {
        let last = dn[start.min(dn.len())..].trim();
        if !last.is_empty() || !parts.is_empty() {
            parts.push(last);
        }
    }
    parts
}

fn rdn_eq(a: &str, b: &str) -> bool {
    let norm = |r: &str| {
        r.split_once('=')
            .map(|(t, v)| format!("{}={}", t.trim(), v.trim()).to_lowercase())
            .unwrap_or_else(|| r.to_lowercase())
    };
    norm(a) == norm(b)
}

/// Whether `dn` is `base` or below it (case-insensitive, spaces around separators ignored).
pub fn dn_within(dn: &str, base: &str) -> bool {
    let d = split_dn(dn);
    let b = split_dn(base);
    if b.is_empty() {
        return true;
    }
    d.len() >= b.len()
        && d[d.len() - b.len()..]
            .iter()
            .zip(b.iter())
            .all(|(x, y)| rdn_eq(x, y))
}

/// The unescaped value of the first RDN (`CN=Smith\, John,OU=x` → `Smith, John`).
pub fn first_rdn_value(dn: &str) -> Option<String> {
    let rdn = split_dn(dn).into_iter().next()?;
    let (_, v) = rdn.split_once('=')?;
    let mut out = Vec::new();
    let b = v.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            if i + 2 < b.len() && b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit() {
                let h = std::str::from_utf8(&b[i + 1..i + 3]).ok()?;
                out.push(u8::from_str_radix(h, 16).ok()?);
                i += 3;
            } else {
                out.push(b[i + 1]);
                i += 2;
            }
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// objectGUID wire bytes (MS-DTYP packet form: first three fields little-endian) → UUID.
pub fn guid_from_bytes(bytes: &[u8]) -> Option<uuid::Uuid> {
    let arr: [u8; 16] = bytes.try_into().ok()?;
    Some(uuid::Uuid::from_bytes_le(arr))
}

/// `(objectGUID=...)` assertion value for a canonical GUID string.
pub fn guid_filter_value(guid: &uuid::Uuid) -> String {
    filter_bytes(&guid.to_bytes_le())
}

/// Binary objectSid → `S-1-5-21-...`.
pub fn sid_to_string(b: &[u8]) -> Option<String> {
    if b.len() < 8 || b[0] != 1 {
        return None;
    }
    let count = b[1] as usize;
    if count > 15 || b.len() != 8 + 4 * count {
        return None;
    }
    let authority = b[2..8].iter().fold(0u64, |a, x| (a << 8) | u64::from(*x));
    let mut s = format!("S-1-{authority}");
    for i in 0..count {
        let o = 8 + 4 * i;
        let sub = u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let _ = write!(s, "-{sub}");
    }
    Some(s)
}

/// FILETIME (100 ns since 1601-01-01 UTC) → Unix seconds; `None` for "never" (0 and i64::MAX).
pub fn filetime_to_unix(v: i64) -> Option<i64> {
    if v == 0 || v == i64::MAX {
        return None;
    }
    Some(v / 10_000_000 - 11_644_473_600)
}

/// accountExpires as the directory sends it (decimal text): passed at `now_unix`?
/// Unparseable values count as not expired (the disabled bit remains the main signal).
pub fn account_expired(value: &str, now_unix: i64) -> bool {
    match value.trim().parse::<i64>() {
        Ok(v) => filetime_to_unix(v).is_some_and(|t| t <= now_unix),
        Err(_) => false,
    }
}

/// LDAP generalized time (`20240131123456.0Z`, `20240131123456Z`) → RFC 3339 UTC.
pub fn generalized_time_to_rfc3339(s: &str) -> Option<String> {
    let s = s.trim();
    let digits = s.get(..14)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let rest = &s[14..];
    let (frac, tz) = match rest.strip_prefix(['.', ',']) {
        Some(r) => {
            let n = r.bytes().take_while(u8::is_ascii_digit).count();
            (&r[..n], &r[n..])
        }
        None => ("", rest),
    };
    if tz != "Z" {
        return None;
    }
    let frac = frac.trim_end_matches('0');
    let frac = if frac.is_empty() {
        String::new()
    } else {
        format!(".{frac}")
    };
    Some(format!(
        "{}-{}-{}T{}:{}:{}{frac}Z",
        &digits[0..4],
        &digits[4..6],
        &digits[6..8],
        &digits[8..10],
        &digits[10..12],
        &digits[12..14]
    ))
}

/// The hex code after `data ` in an AD bind diagnostic (`..., data 52e, v1db1`).
pub fn ad_data_code(text: &str) -> Option<u32> {
    let i = text.find("data ")?;
    let hex: String = text[i + 5..]
        .chars()
        .take_while(char::is_ascii_hexdigit)
        .collect();
    u32::from_str_radix(&hex, 16).ok()
}

/// A failed simple bind's verdict. rc 49 (invalidCredentials) with AD's sub-code; every code
/// other than 52e/525/775 means the password was right but the account cannot log in now.
/// `None`: not a credentials answer (the caller reports an error instead).
pub fn bind_verdict(rc: u32, text: &str) -> Option<PasswordVerdict> {
    if rc != 49 {
        return None;
    }
    Some(match ad_data_code(text) {
        Some(0x533) => PasswordVerdict::Disabled,
        Some(0x775) => PasswordVerdict::Locked,
        Some(0x532) | Some(0x701) => PasswordVerdict::Expired,
        Some(0x773) => PasswordVerdict::MustChange,
        // 52e, 525, anything unknown, or OpenLDAP's plain rc 49
        _ => PasswordVerdict::Invalid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_value_escapes_the_specials() {
        assert_eq!(filter_value("alice"), "alice");
        assert_eq!(filter_value("*)(uid=*"), "\\2a\\29\\28uid=\\2a");
        assert_eq!(filter_value("admin)(|(x=*"), "admin\\29\\28|\\28x=\\2a");
        assert_eq!(filter_value("a\0b"), "a\\00b");
        assert_eq!(filter_value("trailing\\"), "trailing\\5c");
        assert_eq!(filter_value("tab\there"), "tab\\09here");
        assert_eq!(filter_value("Zoë Ångström"), "Zoë Ångström");
        let long = "*".repeat(10_240);
        let e = filter_value(&long);
        assert_eq!(e.len(), 30_720);
        assert!(!e.contains('*'));
    }

    #[test]
    fn escaped_values_stay_one_assertion() {
        for hostile in ["*)(uid=*", "admin)(|(x=*", "x\\", "a\0", "(", ")", "*"] {
            let f = format!("(uid={})", filter_value(hostile));
            check_filter(&f).unwrap_or_else(|e| panic!("{f}: {e}"));
            // the parsed filter is a single equality match, never a presence or substring one
            let tag = ldap3::parse_filter(&f).unwrap();
            let s = format!("{tag:?}");
            assert!(s.contains("id: 3"), "not an equality match: {f} {s}");
        }
    }

    #[test]
    fn filter_bytes_escapes_every_byte() {
        assert_eq!(filter_bytes(&[0x00, 0x2a, 0xff]), "\\00\\2a\\ff");
    }

    #[test]
    fn dn_value_escapes_per_rfc4514() {
        assert_eq!(dn_value("Smith, John"), "Smith\\, John");
        assert_eq!(dn_value("#1 "), "\\#1\\ ");
        assert_eq!(dn_value(" lead"), "\\ lead");
        assert_eq!(dn_value("a+b=c;<>\"\\"), "a\\+b\\=c\\;\\<\\>\\\"\\\\");
        assert_eq!(dn_value("nul\0"), "nul\\00");
        assert_eq!(dn_value("Jürgen"), "Jürgen");
    }

    #[test]
    fn check_filter_refuses_structure_changes() {
        check_filter("(department=Sales)").unwrap();
        check_filter("(&(a=b)(|(c=d)(e=\\2a)))").unwrap();
        for bad in [
            "",
            "department=Sales",
            "(a=b))(|(c=d)",
            "(a=b)(c=d)",
            "((a=b)",
            "(a=\\zz)",
            "(a=b\\)",
            "(&(a=b)",
        ] {
            assert!(check_filter(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn dn_helpers() {
        assert_eq!(
            split_dn("CN=Smith\\, John,OU=People,DC=example,DC=test"),
            vec!["CN=Smith\\, John", "OU=People", "DC=example", "DC=test"]
        );
        assert!(dn_within(
            "CN=a,OU=People,DC=Example, DC=test",
            "dc=example,dc=test"
        ));
        assert!(dn_within("dc=example,dc=test", "DC=example,DC=test"));
        assert!(!dn_within("DC=other,DC=test", "DC=example,DC=test"));
        assert!(!dn_within("DC=test", "DC=example,DC=test"));
        assert!(!dn_within(
            "CN=x,DC=notexample,DC=test",
            "DC=example,DC=test"
        ));
        assert_eq!(
            first_rdn_value("CN=Smith\\, John,OU=People").as_deref(),
            Some("Smith, John")
        );
        assert_eq!(
            first_rdn_value("cn=J\\C3\\BCrgen,ou=x").as_deref(),
            Some("Jürgen")
        );
    }

    #[test]
    fn guid_byte_order_matches_the_lab_example() {
        let wire = hex::decode("49dd96e0629a2445932d5b7ef3171d6b").unwrap();
        let g = guid_from_bytes(&wire).unwrap();
        assert_eq!(g.to_string(), "e096dd49-9a62-4524-932d-5b7ef3171d6b");
        assert_eq!(
            guid_filter_value(&g),
            "\\49\\dd\\96\\e0\\62\\9a\\24\\45\\93\\2d\\5b\\7e\\f3\\17\\1d\\6b"
        );
        assert!(guid_from_bytes(&wire[..15]).is_none());
    }

    #[test]
    fn sid_decodes() {
        let mut b = vec![1u8, 5, 0, 0, 0, 0, 0, 5];
        for sub in [21u32, 970_799_163, 3_749_817_870, 3_493_442_731, 1102] {
            b.extend_from_slice(&sub.to_le_bytes());
        }
        assert_eq!(
            sid_to_string(&b).as_deref(),
            Some("S-1-5-21-970799163-3749817870-3493442731-1102")
        );
        assert!(sid_to_string(&b[..10]).is_none());
    }

    #[test]
    fn filetime() {
        assert_eq!(filetime_to_unix(0), None);
        assert_eq!(filetime_to_unix(i64::MAX), None);
        // 2024-01-01T00:00:00Z
        assert_eq!(
            filetime_to_unix(133_485_408_000_000_000),
            Some(1_704_067_200)
        );
        assert!(account_expired("133485408000000000", 1_704_067_200));
        assert!(!account_expired("133485408000000000", 1_704_067_199));
        assert!(!account_expired("9223372036854775807", i64::MAX));
        assert!(!account_expired("0", 1_704_067_200));
        assert!(!account_expired("garbage", 0));
    }

    #[test]
    fn generalized_time() {
        assert_eq!(
            generalized_time_to_rfc3339("20240131123456.0Z").as_deref(),
            Some("2024-01-31T12:34:56Z")
        );
        assert_eq!(
            generalized_time_to_rfc3339("20240131123456.25Z").as_deref(),
            Some("2024-01-31T12:34:56.25Z")
        );
        assert_eq!(
            generalized_time_to_rfc3339("20240131123456Z").as_deref(),
            Some("2024-01-31T12:34:56Z")
        );
        assert_eq!(generalized_time_to_rfc3339("2024013112Z"), None);
        assert_eq!(generalized_time_to_rfc3339("20240131123456+0100"), None);
    }

    #[test]
    fn bind_diagnostics() {
        let t = |code: &str| {
            format!(
                "80090308: LdapErr: DSID-0C0903A9, comment: AcceptSecurityContext error, data {code}, v1db1"
            )
        };
        assert_eq!(ad_data_code(&t("52e")), Some(0x52e));
        assert_eq!(bind_verdict(49, &t("52e")), Some(PasswordVerdict::Invalid));
        assert_eq!(bind_verdict(49, &t("525")), Some(PasswordVerdict::Invalid));
        assert_eq!(bind_verdict(49, &t("533")), Some(PasswordVerdict::Disabled));
        assert_eq!(bind_verdict(49, &t("775")), Some(PasswordVerdict::Locked));
        assert_eq!(bind_verdict(49, &t("532")), Some(PasswordVerdict::Expired));
        assert_eq!(bind_verdict(49, &t("701")), Some(PasswordVerdict::Expired));
        assert_eq!(
            bind_verdict(49, &t("773")),
            Some(PasswordVerdict::MustChange)
        );
        assert_eq!(bind_verdict(49, ""), Some(PasswordVerdict::Invalid));
        assert_eq!(bind_verdict(53, "unwilling"), None);
        assert_eq!(bind_verdict(0, ""), None);
    }
}
