//! LDAP names and filters as admins type them into mappings: `Dn` (RFC 4514 string syntax,
//! normalized for comparison, "lies within" by RDN suffix) and `check_filter` (RFC 4515 via
//! `ldap3`'s parser, plus checks that say what is wrong and where). Pure functions only.

use std::fmt;

/// Longest filter a mapping may carry.
pub const MAX_FILTER_BYTES: usize = 4096;
/// Longest DN accepted.
pub const MAX_DN_BYTES: usize = 4096;

/// Why a DN or filter was refused; `position` counts characters from 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LdapSyntaxError {
    pub position: Option<usize>,
    pub message: String,
}

impl LdapSyntaxError {
    fn at(position: usize, message: impl Into<String>) -> Self {
        LdapSyntaxError {
            position: Some(position),
            message: message.into(),
        }
    }

    fn whole(message: impl Into<String>) -> Self {
        LdapSyntaxError {
            position: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for LdapSyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some(p) => write!(f, "{} at position {p}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for LdapSyntaxError {}

/// One `type=value` of an RDN: the type lower-cased, the value with escapes resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ava {
    attr: String,
    value: String,
}

/// A distinguished name, parsed. `as_str` is the text as given (trimmed); comparisons use
/// `normalized()`.
#[derive(Debug, Clone)]
pub struct Dn {
    text: String,
    /// RDNs left to right (most specific first); the AVAs of each sorted.
    rdns: Vec<Vec<Ava>>,
}

impl PartialEq for Dn {
    fn eq(&self, other: &Self) -> bool {
        self.normalized() == other.normalized()
    }
}

impl Eq for Dn {}

impl fmt::Display for Dn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn is_special(c: char) -> bool {
    matches!(c, '"' | '+' | ',' | ';' | '<' | '>' | '\\' | '=' | '#')
}

fn hex_val(c: char) -> Option<u8> {
    c.to_digit(16).map(|d| d as u8)
}

struct Parser {
    chars: Vec<char>,
    i: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.i).copied()
    }

    /// 1-based character position of the cursor.
    fn pos(&self) -> usize {
        self.i + 1
    }

    fn skip_spaces(&mut self) {
        while self.peek() == Some(' ') {
            self.i += 1;
        }
    }

    fn attr_type(&mut self) -> Result<String, LdapSyntaxError> {
        let start = self.i;
        let Some(first) = self.peek() else {
            return Err(LdapSyntaxError::at(
                self.pos(),
                "expected an attribute type",
            ));
        };
        if first.is_ascii_alphabetic() {
            while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || c == '-') {
                self.i += 1;
            }
        } else if first.is_ascii_digit() {
            // numericoid: number 1*( "." number )
            let mut dots = 0;
            loop {
                if !matches!(self.peek(), Some(c) if c.is_ascii_digit()) {
                    return Err(LdapSyntaxError::at(self.pos(), "malformed numeric OID"));
                }
                while matches!(self.peek(), Some(c) if c.is_ascii_digit()) {
                    self.i += 1;
                }
                if self.peek() == Some('.') {
                    self.i += 1;
                    dots += 1;
                } else {
                    break;
                }
            }
            if dots == 0 {
                return Err(LdapSyntaxError::at(
                    start + 1,
                    "a numeric attribute type needs at least one '.'",
                ));
            }
        } else {
            return Err(LdapSyntaxError::at(
                self.pos(),
                format!("expected an attribute type, found {first:?}"),
            ));
        }
        Ok(self.chars[start..self.i]
            .iter()
            .collect::<String>()
            .to_ascii_lowercase())
    }

    /// An attribute value up to an unescaped `,`, `+` or the end; trailing unescaped spaces
    /// are not part of it.
    fn value(&mut self) -> Result<String, LdapSyntaxError> {
        if self.peek() == Some('#') {
            // hexstring: the BER encoding, kept as lower-case hex.
            let start = self.pos();
            self.i += 1;
            let mut hex = String::from("#");
            while matches!(self.peek(), Some(c) if c.is_ascii_hexdigit()) {
                hex.push(self.chars[self.i].to_ascii_lowercase());
                self.i += 1;
            }
            if hex.len() < 3 || hex.len() % 2 == 0 {
                return Err(LdapSyntaxError::at(
                    start,
                    "a '#' value needs an even number of hex digits",
                ));
            }
            self.skip_spaces();
            return Ok(hex);
        }
        let mut bytes: Vec<u8> = Vec::new();
        // Length of `bytes` up to the last character that was escaped or not a space.
        let mut keep = 0;
        while let Some(c) = self.peek() {
            match c {
                ',' | '+' => break,
                '\\' => {
                    let at = self.pos();
                    self.i += 1;
                    match self.peek() {
                        Some(e) if is_special(e) || e == ' ' => {
                            let mut buf = [0u8; 4];
                            bytes.extend_from_slice(e.encode_utf8(&mut buf).as_bytes());
                            self.i += 1;
                        }
                        Some(h) if hex_val(h).is_some() => {
                            let lo = self.chars.get(self.i + 1).copied().and_then(hex_val);
                            let (Some(hi), Some(lo)) = (hex_val(h), lo) else {
                                return Err(LdapSyntaxError::at(
                                    at,
                                    "'\\' must be followed by two hex digits or a special character",
                                ));
                            };
                            bytes.push(hi * 16 + lo);
                            self.i += 2;
                        }
                        _ => {
                            return Err(LdapSyntaxError::at(
                                at,
                                "'\\' must be followed by two hex digits or a special character",
                            ));
                        }
                    }
                    keep = bytes.len();
                }
                // RFC 4514 allows '=' unescaped in a value, not these.
                '"' | ';' | '<' | '>' => {
                    return Err(LdapSyntaxError::at(
                        self.pos(),
                        format!("{c:?} must be escaped as \\{c}"),
                    ));
                }
                c if c.is_control() || c == '\0' => {
                    return Err(LdapSyntaxError::at(self.pos(), "control character"));
                }
                c => {
                    let mut buf = [0u8; 4];
                    bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    self.i += 1;
                    if c != ' ' {
                        keep = bytes.len();
                    }
                }
            }
        }
        bytes.truncate(keep);
        String::from_utf8(bytes)
            .map_err(|_| LdapSyntaxError::whole("the escaped bytes of a value are not UTF-8"))
    }
}

impl Dn {
    /// Parses RFC 4514 string syntax: `attr=value` pairs separated by `,`, multi-valued RDNs
    /// joined by `+`, escapes `\,` `\+` `\\` ... and `\xx` (hex bytes of UTF-8), `#hex`
    /// values. Spaces around `=`, `,` and `+` are allowed and ignored. The empty DN is refused
    /// (a mapping always names a subtree).
    pub fn parse(s: &str) -> Result<Dn, LdapSyntaxError> {
        let text = s.trim();
        if text.is_empty() {
            return Err(LdapSyntaxError::whole("the DN is empty"));
        }
        if text.len() > MAX_DN_BYTES {
            return Err(LdapSyntaxError::whole(format!(
                "the DN is longer than {MAX_DN_BYTES} bytes"
            )));
        }
        // Positions are reported in the string as given, leading spaces included.
        let lead = s.chars().take_while(|c| c.is_whitespace()).count();
        let mut p = Parser {
            chars: text.chars().collect(),
            i: 0,
        };
        let shift = |mut e: LdapSyntaxError| {
            e.position = e.position.map(|x| x + lead);
            e
        };
        let mut rdns = Vec::new();
        loop {
            let mut rdn = Vec::new();
            loop {
                p.skip_spaces();
                let attr = p.attr_type().map_err(shift)?;
                p.skip_spaces();
                if p.peek() != Some('=') {
                    return Err(shift(LdapSyntaxError::at(
                        p.pos(),
                        format!("expected '=' after {attr:?}"),
                    )));
                }
                p.i += 1;
                p.skip_spaces();
                let value = p.value().map_err(shift)?;
                if value.is_empty() {
                    return Err(shift(LdapSyntaxError::at(
                        p.pos(),
                        format!("empty value for {attr:?}"),
                    )));
                }
                rdn.push(Ava { attr, value });
                if p.peek() == Some('+') {
                    p.i += 1;
                    continue;
                }
                break;
            }
            rdn.sort_by(|a, b| {
                (a.attr.as_str(), a.value.to_lowercase())
                    .cmp(&(b.attr.as_str(), b.value.to_lowercase()))
            });
            rdns.push(rdn);
            match p.peek() {
                None => break,
                Some(',') => {
                    p.i += 1;
                    if p.chars[p.i..].iter().all(|c| *c == ' ') {
                        return Err(shift(LdapSyntaxError::at(
                            p.i,
                            "trailing ',' with no RDN after it",
                        )));
                    }
                }
                Some(c) => {
                    return Err(shift(LdapSyntaxError::at(
                        p.pos(),
                        format!("unexpected {c:?}"),
                    )));
                }
            }
        }
        Ok(Dn {
            text: text.to_string(),
            rdns,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// How many RDNs the DN has.
    pub fn depth(&self) -> usize {
        self.rdns.len()
    }

    /// The comparable form: attribute types lower-case, values lower-case with escapes
    /// resolved (and re-escaped minimally), no spaces around `=`, `,` or `+`, the AVAs of a
    /// multi-valued RDN in a fixed order.
    pub fn normalized(&self) -> String {
        self.rdns
            .iter()
            .map(|r| rdn_norm(r))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Whether this DN is `base` or lies below it (its last RDNs are `base`'s).
    pub fn is_within(&self, base: &Dn) -> bool {
        if base.rdns.len() > self.rdns.len() {
            return false;
        }
        let skip = self.rdns.len() - base.rdns.len();
        self.rdns[skip..]
            .iter()
            .zip(&base.rdns)
            .all(|(a, b)| rdn_norm(a) == rdn_norm(b))
    }
}

fn rdn_norm(rdn: &[Ava]) -> String {
    rdn.iter()
        .map(|a| format!("{}={}", a.attr, escape_value(&a.value.to_lowercase())))
        .collect::<Vec<_>>()
        .join("+")
}

fn escape_value(v: &str) -> String {
    if v.starts_with('#') && v.len() > 1 && v[1..].bytes().all(|b| b.is_ascii_hexdigit()) {
        return v.to_string();
    }
    let mut out = String::with_capacity(v.len());
    let n = v.chars().count();
    for (i, c) in v.chars().enumerate() {
        let edge_space = c == ' ' && (i == 0 || i + 1 == n);
        if matches!(c, '"' | '+' | ',' | ';' | '<' | '>' | '\\' | '=')
            || edge_space
            || (i == 0 && c == '#')
        {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Checks an LDAP search filter (RFC 4515) and returns the form to store: trimmed, and wrapped
/// in parentheses when the outer pair is missing (`department=Sales` → `(department=Sales)`).
/// Refuses, naming the problem: an empty filter, more than `MAX_FILTER_BYTES`, unbalanced
/// parentheses (with the position), two filters side by side without `(&...)`/`(|...)`, and
/// anything `ldap3`'s parser rejects.
pub fn check_filter(f: &str) -> Result<String, LdapSyntaxError> {
    let t = f.trim();
    if t.is_empty() {
        return Err(LdapSyntaxError::whole("the filter is empty"));
    }
    if t.len() > MAX_FILTER_BYTES {
        return Err(LdapSyntaxError::whole(format!(
            "the filter is longer than {MAX_FILTER_BYTES} bytes"
        )));
    }
    if let Some((i, _)) = t.char_indices().find(|(_, c)| c.is_control()) {
        return Err(LdapSyntaxError::at(
            t[..i].chars().count() + 1,
            "control character in the filter",
        ));
    }
    let wrapped = if t.starts_with('(') {
        t.to_string()
    } else {
        format!("({t})")
    };
    // Literal parentheses in values must be escaped (`\28`, `\29`), so every '(' and ')' is
    // structure and can be counted. Positions refer to the filter as given (trimmed).
    let offset = usize::from(!t.starts_with('('));
    let mut open: Vec<usize> = Vec::new();
    // Where text follows the end of the outermost filter, if it does.
    let mut ended_at: Option<usize> = None;
    let chars: Vec<char> = wrapped.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        let pos = (i + 1).saturating_sub(offset).max(1);
        match c {
            '(' => open.push(pos),
            ')' => {
                if open.pop().is_none() {
                    return Err(LdapSyntaxError::at(
                        pos,
                        "unbalanced parentheses: ')' without a matching '('",
                    ));
                }
                if open.is_empty() && i + 1 < chars.len() && ended_at.is_none() {
                    ended_at = Some(pos + 1);
                }
            }
            _ => {}
        }
    }
    if let Some(p) = open.last() {
        return Err(LdapSyntaxError::at(
            *p,
            "unbalanced parentheses: '(' is never closed",
        ));
    }
    if let Some(p) = ended_at {
        return Err(LdapSyntaxError::at(
            p,
            "text after the end of the filter (combine filters with (&...) or (|...))",
        ));
    }
    if ldap3::parse_filter(&wrapped).is_err() {
        return Err(LdapSyntaxError::whole(
            "not a valid LDAP filter (RFC 4515), e.g. (&(objectClass=user)(department=Sales)); \
             escape literal '(' ')' '*' '\\' in values as \\28 \\29 \\2a \\5c",
        ));
    }
    Ok(wrapped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dn(s: &str) -> Dn {
        Dn::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn dns_normalize_case_spaces_and_escapes() {
        assert_eq!(
            dn("OU = Sales , DC=Example,dc=COM").normalized(),
            "ou=sales,dc=example,dc=com"
        );
        assert_eq!(
            dn(r"CN=Smith\, John,OU=People,DC=x").normalized(),
            r"cn=smith\, john,ou=people,dc=x"
        );
        // \xx bytes are UTF-8: \C3\A9 is é.
        assert_eq!(dn(r"cn=Ren\C3\A9,dc=x"), dn("CN=René,DC=X"));
        assert_eq!(dn(r"cn=a\2Cb,dc=x"), dn(r"cn=a\,b,dc=x"));
        // Multi-valued RDNs compare regardless of order.
        assert_eq!(dn("cn=a+uid=b,dc=x"), dn("UID=B + CN=A,dc=x"));
        assert_eq!(dn("cn=a+uid=b,dc=x").depth(), 2);
        assert_eq!(
            dn("1.3.6.1.4.1.1466.0=#04024869,dc=x").normalized(),
            "1.3.6.1.4.1.1466.0=#04024869,dc=x"
        );
        assert_eq!(dn(r"cn=x\ ,dc=y").normalized(), r"cn=x\ ,dc=y");
        assert_eq!(dn("cn=a=b,dc=y").normalized(), r"cn=a\=b,dc=y");
    }

    #[test]
    fn malformed_dns_are_refused_with_a_position() {
        for (s, want) in [
            ("", "empty"),
            ("ou", "expected '='"),
            ("ou=", "empty value"),
            ("ou=a,", "trailing ','"),
            ("ou=a,,dc=b", "expected an attribute type"),
            ("=a", "expected an attribute type"),
            (r"cn=a\zz", "hex digits"),
            (r"cn=a\4", "hex digits"),
            ("cn=a;dc=b", "escaped"),
            ("1=a", "numeric"),
            (r"cn=\FF\FE", "UTF-8"),
            ("cn=#abc", "hex digits"),
        ] {
            let e = Dn::parse(s).err().unwrap_or_else(|| panic!("{s:?} parsed"));
            assert!(e.to_string().contains(want), "{s:?}: {e}");
        }
        let e = Dn::parse("ou=a,,dc=b").unwrap_err();
        assert_eq!(e.position, Some(6));
    }

    #[test]
    fn within_is_an_rdn_suffix_match() {
        let base = dn("DC=example,DC=com");
        assert!(dn("ou=Sales,dc=Example,dc=com").is_within(&base));
        assert!(dn("dc=example, dc=com").is_within(&base));
        assert!(dn("cn=x,ou=Sales,dc=example,dc=com").is_within(&dn("ou=sales,dc=example,dc=com")));
        assert!(!dn("ou=Sales,dc=other,dc=com").is_within(&base));
        assert!(!dn("dc=com").is_within(&base));
        // A suffix of the text is not a suffix of RDNs.
        assert!(!dn("dc=myexample,dc=com").is_within(&base));
    }

    #[test]
    fn filters_are_checked_and_wrapped() {
        assert_eq!(
            check_filter(" department=Sales ").unwrap(),
            "(department=Sales)"
        );
        assert_eq!(
            check_filter("(&(objectClass=user)(department=Sales))").unwrap(),
            "(&(objectClass=user)(department=Sales))"
        );
        for (f, want) in [
            ("", "empty"),
            ("   ", "empty"),
            ("(&(a=b)", "never closed at position 1"),
            ("(a=b))", "without a matching '(' at position 6"),
            ("(a=b)(c=d)", "(|...)) at position 6"),
            ("(a=b", "never closed"),
            ("(=b)", "RFC 4515"),
            ("(a=b\u{1})", "control character"),
        ] {
            let e = check_filter(f)
                .err()
                .unwrap_or_else(|| panic!("{f:?} passed"));
            assert!(e.to_string().contains(want), "{f:?}: {e}");
        }
        let long = format!("(cn={})", "a".repeat(MAX_FILTER_BYTES));
        assert!(
            check_filter(&long)
                .unwrap_err()
                .to_string()
                .contains("longer")
        );
    }
}
