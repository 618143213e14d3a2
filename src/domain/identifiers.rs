//! Hardware and network identifiers a device is matched by (serial number,
//! SMBIOS UUID, hostname): the normalized forms used for matching, and the
//! firmware placeholder values that must never match anything.

use serde::{Deserialize, Serialize};

use super::FieldError;

/// Firmware and agent placeholders, compared after `squash` (lowercase ASCII
/// alphanumerics only) so "N/A", "n.a." and "NA" are one entry. Sources:
/// the placeholder list in the deployment-formats note (merged from several
/// inventory projects), plus dmidecode's "Not Settable"/"Not Present" and
/// "null" from agents that serialize a missing value.
const PLACEHOLDERS: &[&str] = &[
    "tobefilledbyoem",
    "defaultstring",
    "systemserialnumber",
    "systemproductname",
    "notspecified",
    "notapplicable",
    "notsettable",
    "notpresent",
    "none",
    "null",
    "na",
    "unknown",
    "0",
    "0123456789",
    "123456789",
];

/// Longer than any entry of `PLACEHOLDERS` or `HOSTNAME_PLACEHOLDERS`.
const SQUASH_CAP: usize = 24;

/// Hostnames every unconfigured machine answers to.
const HOSTNAME_PLACEHOLDERS: &[&str] = &["localhost"];

const MAX_HOSTNAME: usize = 253;
const MAX_LABEL: usize = 63;

/// Which identifier a device map row (or a lookup) uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdentifierType {
    SerialNumber,
    Uuid,
    Hostname,
}

impl IdentifierType {
    pub const ALL: [IdentifierType; 3] = [
        IdentifierType::SerialNumber,
        IdentifierType::Uuid,
        IdentifierType::Hostname,
    ];

    /// Case-insensitive, surrounding whitespace ignored.
    pub fn parse(s: &str) -> Result<Self, FieldError> {
        let t = s.trim();
        Self::ALL
            .into_iter()
            .find(|v| v.as_str().eq_ignore_ascii_case(t))
            .ok_or_else(|| {
                FieldError::new(
                    "identifierType",
                    format!(
                        "unknown identifier type \"{t}\" (expected serial-number, uuid or hostname)"
                    ),
                )
            })
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            IdentifierType::SerialNumber => "serial-number",
            IdentifierType::Uuid => "uuid",
            IdentifierType::Hostname => "hostname",
        }
    }

    /// Validates and normalizes a value an admin supplied for this type.
    /// Unlike `DeviceIdentifiers::from_raw`, a placeholder is an error here:
    /// a mapping keyed on "To Be Filled By O.E.M." would match every
    /// unbranded machine in the fleet.
    pub fn normalize(&self, raw: &str) -> Result<String, FieldError> {
        const FIELD: &str = "identifier";
        let t = raw.trim();
        if t.is_empty() {
            return Err(FieldError::new(FIELD, "missing value"));
        }
        let normalized = match self {
            IdentifierType::SerialNumber => {
                if t.chars().any(char::is_control) {
                    return Err(FieldError::new(FIELD, "contains control characters"));
                }
                normalize_serial(t)
            }
            IdentifierType::Uuid => {
                normalize_uuid(t).map_err(|e| FieldError::new(FIELD, e.message))?
            }
            IdentifierType::Hostname => {
                validate_hostname(t).map_err(|e| FieldError::new(FIELD, e.message))?;
                normalize_hostname(t)
            }
        };
        normalized.ok_or_else(|| {
            FieldError::new(
                FIELD,
                format!("placeholder value \"{t}\" is not a usable identifier"),
            )
        })
    }
}

impl std::fmt::Display for IdentifierType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Serial number for matching: trimmed, uppercase. `None` for empty values
/// and placeholders, including strings of one repeated character
/// ("0000000", "XXXXXXXX") that boards ship with unprogrammed.
pub fn normalize_serial(raw: &str) -> Option<String> {
    let t = raw.trim();
    if t.is_empty() || is_placeholder(t, &[]) || all_same_alphanumeric(t) {
        return None;
    }
    Some(t.to_uppercase())
}

/// SMBIOS/system UUID for matching, as uppercase hyphenated 8-4-4-4-12.
/// Accepts hyphenated, `{braced}` (Windows registry style) or 32 bare hex
/// digits in any case. `Ok(None)` for empty values and placeholders (all
/// zeros, all F, "Not Settable", ...); `Err` for anything else that is not a
/// UUID.
pub fn normalize_uuid(raw: &str) -> Result<Option<String>, FieldError> {
    let t = raw.trim();
    if t.is_empty() {
        return Ok(None);
    }
    let inner = t
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .unwrap_or(t);
    let Some(hex) = uuid_hex_digits(inner.as_bytes()) else {
        if is_placeholder(t, &[]) {
            return Ok(None);
        }
        return Err(FieldError::new(
            "uuid",
            "not a valid UUID (expected 8-4-4-4-12 hex digits, optionally in braces, or 32 hex digits)",
        ));
    };
    if hex.iter().all(|&d| d == hex[0]) {
        return Ok(None);
    }
    let mut out = String::with_capacity(36);
    for (i, &d) in hex.iter().enumerate() {
        if matches!(i, 8 | 12 | 16 | 20) {
            out.push('-');
        }
        out.push(char::from(d.to_ascii_uppercase()));
    }
    Ok(Some(out))
}

/// The 32 hex digits of a hyphenated or bare UUID, or `None`.
fn uuid_hex_digits(s: &[u8]) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    let mut n = 0;
    match s.len() {
        36 => {
            for (i, &b) in s.iter().enumerate() {
                if matches!(i, 8 | 13 | 18 | 23) {
                    if b != b'-' {
                        return None;
                    }
                } else if b.is_ascii_hexdigit() {
                    out[n] = b;
                    n += 1;
                } else {
                    return None;
                }
            }
        }
        32 => {
            for (slot, &b) in out.iter_mut().zip(s) {
                if !b.is_ascii_hexdigit() {
                    return None;
                }
                *slot = b;
            }
        }
        _ => return None,
    }
    Some(out)
}

/// Hostname for matching: trimmed, trailing root dot and DNS suffix dropped
/// (agents report "laptop-12" or "laptop-12.corp.example.com" depending on
/// OS and join state), lowercase. `None` for empty values, placeholders
/// such as "localhost", and IP address literals, whose first label ("10")
/// would otherwise match half the network. Does not check characters: a
/// device may report a name the device map could never contain, which then
/// simply matches nothing (see `validate_hostname`).
pub fn normalize_hostname(raw: &str) -> Option<String> {
    let t = raw.trim();
    let t = t.strip_suffix('.').unwrap_or(t);
    if is_ip_literal(t) {
        return None;
    }
    let short = t.split('.').next().unwrap_or_default();
    if short.is_empty() || is_placeholder(short, HOSTNAME_PLACEHOLDERS) {
        return None;
    }
    Some(short.to_lowercase())
}

/// Syntax check for hostnames supplied by admins: 1..=253 characters
/// (a trailing root dot allowed), dot-separated labels of 1..=63 ASCII
/// letters, digits, '-' or '_' (NetBIOS-era Windows names use '_'), and not
/// an IP address.
pub fn validate_hostname(raw: &str) -> Result<(), FieldError> {
    let err = |m: String| FieldError::new("hostname", m);
    let t = raw.trim();
    if t.is_empty() {
        return Err(err("missing value".into()));
    }
    if t.chars().any(char::is_whitespace) {
        return Err(err(format!(
            "not a valid hostname (\"{t}\" contains whitespace)"
        )));
    }
    let body = t.strip_suffix('.').unwrap_or(t);
    if body.len() > MAX_HOSTNAME {
        return Err(err(format!(
            "not a valid hostname (longer than {MAX_HOSTNAME} characters)"
        )));
    }
    for label in body.split('.') {
        if label.is_empty() || label.len() > MAX_LABEL {
            return Err(err(format!(
                "not a valid hostname (\"{t}\": each dot-separated part must be 1 to {MAX_LABEL} characters)"
            )));
        }
        if let Some(c) = label
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        {
            return Err(err(format!(
                "not a valid hostname (character '{c}' is not allowed)"
            )));
        }
    }
    if is_ip_literal(body) {
        return Err(err(format!("\"{t}\" is an IP address, not a hostname")));
    }
    Ok(())
}

/// Dotted all-numeric names (IPv4 and the like) and anything with ':' (IPv6).
fn is_ip_literal(s: &str) -> bool {
    s.contains(':')
        || (s.contains('.')
            && s.split('.')
                .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit())))
}

/// True when `s`, reduced to lowercase ASCII alphanumerics, is a known
/// placeholder or has no alphanumerics at all ("-", "...").
fn is_placeholder(s: &str, extra: &[&str]) -> bool {
    let mut buf = [0u8; SQUASH_CAP];
    let mut len = 0;
    let mut any = false;
    for c in s.chars().filter(|c| c.is_alphanumeric()) {
        any = true;
        if !c.is_ascii() || len == SQUASH_CAP {
            // Every placeholder is short ASCII; this cannot be one.
            return false;
        }
        buf[len] = c.to_ascii_lowercase() as u8;
        len += 1;
    }
    if !any {
        return true;
    }
    let squashed = &buf[..len];
    PLACEHOLDERS
        .iter()
        .chain(extra)
        .any(|p| p.as_bytes() == squashed)
}

/// "00000000", "XXXX-XXXX", "a": unprogrammed or filler serials.
fn all_same_alphanumeric(s: &str) -> bool {
    let mut chars = s
        .chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase);
    match chars.next() {
        None => true,
        Some(first) => chars.all(|c| c == first),
    }
}

/// The identifiers a device reports at activation, normalized for matching.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceIdentifiers {
    pub hostname: Option<String>,
    pub serial: Option<String>,
    pub uuid: Option<String>,
}

impl DeviceIdentifiers {
    /// Normalizes what a client reported. Placeholders are dropped rather
    /// than rejected because agents pass through whatever firmware says;
    /// only a malformed UUID is an error (it means a broken agent, not a
    /// cheap motherboard). At least one usable identifier must remain.
    pub fn from_raw(
        hostname: Option<&str>,
        serial: Option<&str>,
        uuid: Option<&str>,
    ) -> Result<DeviceIdentifiers, FieldError> {
        let uuid = match uuid {
            Some(u) => normalize_uuid(u).map_err(|e| FieldError::new("device.uuid", e.message))?,
            None => None,
        };
        let ids = DeviceIdentifiers {
            hostname: hostname.and_then(normalize_hostname),
            serial: serial.and_then(normalize_serial),
            uuid,
        };
        if ids.hostname.is_none() && ids.serial.is_none() && ids.uuid.is_none() {
            return Err(FieldError::new(
                "device",
                "at least one usable identifier (hostname, serial or uuid) is required",
            ));
        }
        Ok(ids)
    }

    pub fn get(&self, t: IdentifierType) -> Option<&str> {
        match t {
            IdentifierType::SerialNumber => self.serial.as_deref(),
            IdentifierType::Uuid => self.uuid.as_deref(),
            IdentifierType::Hostname => self.hostname.as_deref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_serial_trims_and_uppercases() {
        assert_eq!(
            normalize_serial("  c02xk1abjg5h \n").as_deref(),
            Some("C02XK1ABJG5H")
        );
        assert_eq!(normalize_serial("PF-2ABC 9").as_deref(), Some("PF-2ABC 9"));
        assert_eq!(
            normalize_serial("0123456780").as_deref(),
            Some("0123456780")
        );
    }

    #[test]
    fn normalize_serial_drops_placeholders_case_insensitively() {
        for p in [
            "",
            "   ",
            "To Be Filled By O.E.M.",
            "to be filled by o.e.m",
            "Default string",
            "DEFAULT STRING",
            "System Serial Number",
            "System Product Name",
            "Not Specified",
            "Not Applicable",
            "Not Settable",
            "None",
            "N/A",
            "n/a",
            "NA",
            "Unknown",
            "0",
            "0123456789",
            "123456789",
            "00000000",
            "XXXXXXXXXX",
            "xXxX",
            "1111-1111",
            "-",
            "...",
        ] {
            assert_eq!(normalize_serial(p), None, "{p:?} should be a placeholder");
        }
    }

    #[test]
    fn normalize_uuid_accepts_three_syntaxes_and_uppercases() {
        let want = Some("4C4C4544-0042-3510-8052-B4C04F564433".to_string());
        for s in [
            "4c4c4544-0042-3510-8052-b4c04f564433",
            "4C4C4544-0042-3510-8052-B4C04F564433",
            "{4c4c4544-0042-3510-8052-B4C04F564433}",
            "4c4c4544004235108052b4c04f564433",
            " 4C4C4544-0042-3510-8052-B4C04F564433 ",
        ] {
            assert_eq!(normalize_uuid(s).unwrap(), want, "{s}");
        }
    }

    #[test]
    fn normalize_uuid_maps_placeholders_to_none() {
        for s in [
            "",
            "  ",
            "00000000-0000-0000-0000-000000000000",
            "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF",
            "ffffffffffffffffffffffffffffffff",
            "{00000000-0000-0000-0000-000000000000}",
            "Not Settable",
            "Not Present",
            "N/A",
        ] {
            assert_eq!(normalize_uuid(s).unwrap(), None, "{s:?}");
        }
    }

    #[test]
    fn normalize_uuid_rejects_bad_syntax() {
        for s in [
            "4c4c4544-0042-3510-8052-b4c04f56443",   // one digit short
            "4c4c4544-0042-3510-8052-b4c04f5644331", // one digit long
            "4c4c4544_0042_3510_8052_b4c04f564433",
            "4c4c4544-0042-3510-8052-b4c04f56443g",
            "{4c4c4544-0042-3510-8052-b4c04f564433",
            "urn:uuid:4c4c4544-0042-3510-8052-b4c04f564433",
            "4c4c-4544-0042-3510-8052-b4c04f564433",
            "laptop-12",
        ] {
            let e = normalize_uuid(s).expect_err(s);
            assert_eq!(e.field, "uuid");
        }
    }

    #[test]
    fn normalize_hostname_strips_dns_suffix_and_lowercases() {
        assert_eq!(
            normalize_hostname("LAPTOP-12").as_deref(),
            Some("laptop-12")
        );
        assert_eq!(
            normalize_hostname(" Laptop-12.Corp.Example.com ").as_deref(),
            Some("laptop-12")
        );
        assert_eq!(
            normalize_hostname("laptop-12.corp.example.com.").as_deref(),
            Some("laptop-12")
        );
        assert_eq!(normalize_hostname("WS_007").as_deref(), Some("ws_007"));
    }

    #[test]
    fn normalize_hostname_drops_placeholders_and_ip_literals() {
        for s in [
            "",
            " ",
            ".",
            ".example.com",
            "localhost",
            "LOCALHOST.localdomain",
            "(none)",
            "Unknown",
            "10.1.2.3",
            "fe80::1",
        ] {
            assert_eq!(normalize_hostname(s), None, "{s:?}");
        }
    }

    #[test]
    fn validate_hostname_accepts_names_and_fqdns() {
        for s in [
            "laptop-12",
            "LAPTOP_12",
            "a",
            "laptop-12.corp.example.com",
            "laptop-12.corp.example.com.",
            "1host",
        ] {
            assert!(validate_hostname(s).is_ok(), "{s}");
        }
        let label63 = "h".repeat(63);
        assert!(validate_hostname(&label63).is_ok());
        let long = [label63.as_str(); 4].join(".");
        assert_eq!(long.len(), 255);
        assert!(validate_hostname(&long[..253]).is_ok());
    }

    #[test]
    fn validate_hostname_rejects_bad_names() {
        let label64 = "h".repeat(64);
        let too_long = ["abcdefghij"; 24].join(".");
        assert!(too_long.len() > 253);
        for s in [
            "",
            "my laptop",
            "laptop\t12",
            "laptop..corp",
            ".laptop",
            "laptop$",
            "läptop",
            "laptop/12",
            label64.as_str(),
            too_long.as_str(),
            "10.0.0.5",
            "fe80::1",
        ] {
            let e = validate_hostname(s).expect_err(s);
            assert_eq!(e.field, "hostname");
        }
    }

    #[test]
    fn identifier_type_parses_case_insensitively_and_round_trips_serde() {
        assert_eq!(
            IdentifierType::parse(" Serial-Number ").unwrap(),
            IdentifierType::SerialNumber
        );
        assert_eq!(IdentifierType::parse("UUID").unwrap(), IdentifierType::Uuid);
        assert_eq!(
            IdentifierType::parse("hostname").unwrap(),
            IdentifierType::Hostname
        );
        assert!(IdentifierType::parse("serial").is_err());
        assert!(IdentifierType::parse("").is_err());
        for t in IdentifierType::ALL {
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, format!("\"{}\"", t.as_str()));
            assert_eq!(serde_json::from_str::<IdentifierType>(&json).unwrap(), t);
        }
    }

    #[test]
    fn identifier_type_normalize_rejects_placeholders_and_bad_syntax() {
        let e = IdentifierType::SerialNumber
            .normalize("To Be Filled By O.E.M.")
            .unwrap_err();
        assert_eq!(
            e.message,
            "placeholder value \"To Be Filled By O.E.M.\" is not a usable identifier"
        );
        assert!(
            IdentifierType::Uuid
                .normalize("00000000-0000-0000-0000-000000000000")
                .unwrap_err()
                .message
                .starts_with("placeholder value")
        );
        assert!(
            IdentifierType::Hostname
                .normalize("localhost")
                .unwrap_err()
                .message
                .starts_with("placeholder value")
        );
        assert!(
            IdentifierType::Uuid
                .normalize("xyz")
                .unwrap_err()
                .message
                .contains("UUID")
        );
        assert!(IdentifierType::Hostname.normalize("my laptop").is_err());
        assert_eq!(
            IdentifierType::SerialNumber
                .normalize(" ")
                .unwrap_err()
                .message,
            "missing value"
        );
        assert_eq!(
            IdentifierType::Hostname
                .normalize("PC-1.corp.example.com")
                .unwrap(),
            "pc-1"
        );
        assert_eq!(
            IdentifierType::SerialNumber.normalize(" abc1 ").unwrap(),
            "ABC1"
        );
    }

    #[test]
    fn device_identifiers_from_raw_normalizes_and_drops_placeholders() {
        let ids = DeviceIdentifiers::from_raw(
            Some("Laptop-7.corp.example.com"),
            Some("Default string"),
            Some("{4c4c4544-0042-3510-8052-b4c04f564433}"),
        )
        .unwrap();
        assert_eq!(ids.hostname.as_deref(), Some("laptop-7"));
        assert_eq!(ids.serial, None);
        assert_eq!(
            ids.get(IdentifierType::Uuid),
            Some("4C4C4544-0042-3510-8052-B4C04F564433")
        );
        assert_eq!(ids.get(IdentifierType::Hostname), Some("laptop-7"));
        assert_eq!(ids.get(IdentifierType::SerialNumber), None);
    }

    #[test]
    fn device_identifiers_from_raw_rejects_bad_uuid_and_nothing_usable() {
        let e = DeviceIdentifiers::from_raw(Some("pc"), None, Some("not-a-uuid")).unwrap_err();
        assert_eq!(e.field, "device.uuid");

        let e = DeviceIdentifiers::from_raw(
            Some("localhost"),
            Some("0"),
            Some("00000000-0000-0000-0000-000000000000"),
        )
        .unwrap_err();
        assert_eq!(e.field, "device");
        assert_eq!(
            e.message,
            "at least one usable identifier (hostname, serial or uuid) is required"
        );
        assert!(DeviceIdentifiers::from_raw(None, None, None).is_err());
    }
}
