//! A small OData `$filter` parser/evaluator (`eq`, `ne`, `in`, `startsWith`, `endsWith`, `not`,
//! `and`, `or`, parentheses, `'…'` literals with `''` escapes, `true`/`false`/`null`) plus the
//! §6 split between default and advanced (ConsistencyLevel + `$count`) queries, and `$search`.

use serde_json::Value;

use crate::odata::GraphError;
use crate::tenant::Props;

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Lit {
    Str(String),
    Bool(bool),
    Num(f64),
    Null,
}

#[derive(Clone, Debug)]
pub(crate) enum Expr {
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Eq(String, Lit),
    Ne(String, Lit),
    In(String, Vec<Lit>),
    StartsWith(String, String),
    EndsWith(String, String),
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(f64),
    Open,
    Close,
    Comma,
}

fn invalid(msg: &str) -> GraphError {
    GraphError::bad_request(format!("Invalid filter clause: {msg}"))
}

fn tokenize(s: &str) -> Result<Vec<Tok>, GraphError> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                out.push(Tok::Open);
                i += 1;
            }
            ')' => {
                out.push(Tok::Close);
                i += 1;
            }
            ',' => {
                out.push(Tok::Comma);
                i += 1;
            }
            '\'' => {
                let mut lit = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(invalid("unterminated string literal")),
                        Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                            lit.push('\'');
                            i += 2;
                        }
                        Some('\'') => {
                            i += 1;
                            break;
                        }
                        Some(&ch) => {
                            lit.push(ch);
                            i += 1;
                        }
                    }
                }
                out.push(Tok::Str(lit));
            }
            c if c.is_ascii_digit() || c == '-' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || "-.".contains(chars[i]))
                {
                    i += 1;
                }
                let text: String = chars[start..i].iter().collect();
                match text.parse::<f64>() {
                    Ok(n) => out.push(Tok::Num(n)),
                    Err(_) => return Err(invalid(&format!("bad literal {text}"))),
                }
            }
            c if c.is_alphanumeric() || c == '_' => {
                let start = i;
                while i < chars.len() && (chars[i].is_alphanumeric() || "_/.".contains(chars[i])) {
                    i += 1;
                }
                out.push(Tok::Ident(chars[start..i].iter().collect()));
            }
            other => return Err(invalid(&format!("unexpected character '{other}'"))),
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek_kw(&self, kw: &str) -> bool {
        matches!(self.toks.get(self.pos), Some(Tok::Ident(s)) if s.eq_ignore_ascii_case(kw))
    }
    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }
    fn expect(&mut self, t: Tok) -> Result<(), GraphError> {
        if self.next() == Some(t.clone()) {
            Ok(())
        } else {
            Err(invalid(&format!("expected {t:?}")))
        }
    }
    fn or(&mut self) -> Result<Expr, GraphError> {
        let mut e = self.and()?;
        while self.peek_kw("or") {
            self.pos += 1;
            e = Expr::Or(Box::new(e), Box::new(self.and()?));
        }
        Ok(e)
    }
    fn and(&mut self) -> Result<Expr, GraphError> {
        let mut e = self.unary()?;
        while self.peek_kw("and") {
            self.pos += 1;
            e = Expr::And(Box::new(e), Box::new(self.unary()?));
        }
        Ok(e)
    }
    fn unary(&mut self) -> Result<Expr, GraphError> {
        if self.peek_kw("not") {
            self.pos += 1;
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        match self.next() {
            Some(Tok::Open) => {
                let e = self.or()?;
                self.expect(Tok::Close)?;
                Ok(e)
            }
            Some(Tok::Ident(name)) => {
                if matches!(self.toks.get(self.pos), Some(Tok::Open)) {
                    // startsWith(prop,'x') / endsWith(prop,'x')
                    self.pos += 1;
                    let prop = match self.next() {
                        Some(Tok::Ident(p)) => p,
                        _ => return Err(invalid("expected a property name")),
                    };
                    self.expect(Tok::Comma)?;
                    let val = match self.next() {
                        Some(Tok::Str(v)) => v,
                        _ => return Err(invalid("expected a string literal")),
                    };
                    self.expect(Tok::Close)?;
                    return match name.to_ascii_lowercase().as_str() {
                        "startswith" => Ok(Expr::StartsWith(prop, val)),
                        "endswith" => Ok(Expr::EndsWith(prop, val)),
                        _ => Err(GraphError::unsupported(format!(
                            "Unsupported function '{name}'."
                        ))),
                    };
                }
                let op = match self.next() {
                    Some(Tok::Ident(op)) => op.to_ascii_lowercase(),
                    _ => return Err(invalid("expected an operator")),
                };
                match op.as_str() {
                    "eq" => Ok(Expr::Eq(name, self.literal()?)),
                    "ne" => Ok(Expr::Ne(name, self.literal()?)),
                    "in" => {
                        self.expect(Tok::Open)?;
                        let mut vals = vec![self.literal()?];
                        while self.toks.get(self.pos) == Some(&Tok::Comma) {
                            self.pos += 1;
                            vals.push(self.literal()?);
                        }
                        self.expect(Tok::Close)?;
                        Ok(Expr::In(name, vals))
                    }
                    other => Err(GraphError::unsupported(format!(
                        "Operator '{other}' is not supported by the stand-in."
                    ))),
                }
            }
            _ => Err(invalid("expected a clause")),
        }
    }
    fn literal(&mut self) -> Result<Lit, GraphError> {
        match self.next() {
            Some(Tok::Str(s)) => Ok(Lit::Str(s)),
            Some(Tok::Num(n)) => Ok(Lit::Num(n)),
            Some(Tok::Ident(w)) if w == "true" => Ok(Lit::Bool(true)),
            Some(Tok::Ident(w)) if w == "false" => Ok(Lit::Bool(false)),
            Some(Tok::Ident(w)) if w == "null" => Ok(Lit::Null),
            _ => Err(invalid("expected a literal")),
        }
    }
}

pub(crate) fn parse(s: &str) -> Result<Expr, GraphError> {
    let mut p = Parser {
        toks: tokenize(s)?,
        pos: 0,
    };
    let e = p.or()?;
    if p.pos != p.toks.len() {
        return Err(invalid("trailing input"));
    }
    Ok(e)
}

/// Filter capabilities of one resource type (§6 table).
pub(crate) struct Caps {
    pub resource: &'static str,
    /// `eq`/`in` without advanced parameters.
    pub eq_default: &'static [&'static str],
    /// `eq`/`in` only as an advanced query.
    pub eq_advanced: &'static [&'static str],
    pub sw_default: &'static [&'static str],
    pub sw_advanced: &'static [&'static str],
    /// `endsWith` (always advanced).
    pub ew_advanced: &'static [&'static str],
    /// Prefixes of advanced-only `eq` properties (`extension_`, `onPremisesExtensionAttributes/`).
    pub eq_advanced_prefixes: &'static [&'static str],
}

pub(crate) const USER_CAPS: Caps = Caps {
    resource: "User",
    eq_default: &[
        "id",
        "accountEnabled",
        "department",
        "country",
        "usageLocation",
        "displayName",
        "mail",
        "userPrincipalName",
        "givenName",
        "surname",
        "jobTitle",
        "city",
        "state",
        "employeeId",
        "mailNickname",
        "userType",
        "preferredLanguage",
        "mobilePhone",
        "createdDateTime",
    ],
    eq_advanced: &[
        "onPremisesSamAccountName",
        "onPremisesImmutableId",
        "companyName",
        "officeLocation",
        "postalCode",
        "employeeType",
        "onPremisesSyncEnabled",
        "onPremisesUserPrincipalName",
    ],
    sw_default: &[
        "department",
        "country",
        "usageLocation",
        "displayName",
        "mail",
        "userPrincipalName",
        "givenName",
        "surname",
        "city",
        "state",
        "employeeId",
        "mailNickname",
    ],
    sw_advanced: &[
        "jobTitle",
        "onPremisesSamAccountName",
        "companyName",
        "officeLocation",
        "postalCode",
        "employeeType",
    ],
    ew_advanced: &["mail", "userPrincipalName"],
    eq_advanced_prefixes: &["extension_", "onPremisesExtensionAttributes/"],
};

pub(crate) const GROUP_CAPS: Caps = Caps {
    resource: "Group",
    eq_default: &[
        "id",
        "displayName",
        "mail",
        "mailNickname",
        "mailEnabled",
        "securityEnabled",
        "onPremisesSyncEnabled",
        "isAssignableToRole",
        "visibility",
    ],
    eq_advanced: &["description", "classification", "onPremisesSamAccountName"],
    sw_default: &["displayName", "mail", "mailNickname"],
    sw_advanced: &["description", "onPremisesSamAccountName"],
    ew_advanced: &["mail", "displayName", "mailNickname"],
    eq_advanced_prefixes: &["extension_"],
};

fn in_list(list: &[&str], p: &str) -> bool {
    list.iter().any(|x| x.eq_ignore_ascii_case(p))
}

fn has_prefix(list: &[&str], p: &str) -> bool {
    list.iter()
        .any(|x| p.len() > x.len() && p[..x.len()].eq_ignore_ascii_case(x))
}

fn prop_unsupported(p: &str, caps: &Caps) -> GraphError {
    GraphError::unsupported(format!(
        "Unsupported or invalid query filter clause specified for property '{p}' of resource '{}'.",
        caps.resource
    ))
}

fn operator_needs_advanced(op: &str) -> GraphError {
    GraphError::unsupported(format!(
        "Operator '{op}' is not supported because the required parameters might be missing. Try adding $count=true query parameter and ConsistencyLevel:eventual header. Refer to https://aka.ms/graph-docs/advanced-queries for more information"
    ))
}

/// Checks every clause against the capability table. `Ok(())` when the query may run with the
/// given `advanced` flag; the §6 400 otherwise (also for properties that are never filterable).
pub(crate) fn check(e: &Expr, caps: &Caps, advanced: bool) -> Result<(), GraphError> {
    let eq_kind = |p: &str| -> Result<bool, GraphError> {
        if in_list(caps.eq_default, p) {
            Ok(false)
        } else if in_list(caps.eq_advanced, p) || has_prefix(caps.eq_advanced_prefixes, p) {
            Ok(true)
        } else {
            Err(prop_unsupported(p, caps))
        }
    };
    match e {
        Expr::And(a, b) | Expr::Or(a, b) => {
            check(a, caps, advanced)?;
            check(b, caps, advanced)
        }
        Expr::Not(inner) => {
            if !advanced {
                return Err(operator_needs_advanced("Not"));
            }
            check(inner, caps, advanced)
        }
        Expr::Eq(p, lit) => {
            let needs = eq_kind(p)?;
            if *lit == Lit::Null && !advanced {
                return Err(operator_needs_advanced("Equals null"));
            }
            if needs && !advanced {
                return Err(prop_unsupported(p, caps));
            }
            Ok(())
        }
        Expr::In(p, _) => {
            if eq_kind(p)? && !advanced {
                return Err(prop_unsupported(p, caps));
            }
            Ok(())
        }
        Expr::Ne(p, _) => {
            eq_kind(p)?;
            if !advanced {
                return Err(operator_needs_advanced("NotEquals"));
            }
            Ok(())
        }
        Expr::StartsWith(p, _) => {
            if in_list(caps.sw_default, p) {
                Ok(())
            } else if in_list(caps.sw_advanced, p) {
                if advanced {
                    Ok(())
                } else {
                    Err(prop_unsupported(p, caps))
                }
            } else {
                Err(prop_unsupported(p, caps))
            }
        }
        Expr::EndsWith(p, _) => {
            if !in_list(caps.ew_advanced, p) {
                return Err(if advanced {
                    GraphError::unsupported(
                        "The request uses a filter property that is not indexed",
                    )
                } else {
                    prop_unsupported(p, caps)
                });
            }
            if advanced {
                Ok(())
            } else {
                Err(operator_needs_advanced("endsWith"))
            }
        }
    }
}

/// Property value by (possibly `/`-nested) name, case-insensitive.
fn get<'a>(props: &'a Props, path: &str) -> Option<&'a Value> {
    let mut cur: Option<&Value> = None;
    for (i, seg) in path.split('/').enumerate() {
        let map = if i == 0 {
            Some(props)
        } else {
            cur.and_then(Value::as_object)
        };
        cur = map.and_then(|m| {
            m.get(seg).or_else(|| {
                m.iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(seg))
                    .map(|(_, v)| v)
            })
        });
    }
    cur
}

fn lit_matches(v: Option<&Value>, lit: &Lit) -> bool {
    match (v, lit) {
        (None | Some(Value::Null), Lit::Null) => true,
        (Some(Value::String(s)), Lit::Str(l)) => s.to_lowercase() == l.to_lowercase(),
        (Some(Value::Bool(b)), Lit::Bool(l)) => b == l,
        (Some(Value::Number(n)), Lit::Num(l)) => n.as_f64() == Some(*l),
        _ => false,
    }
}

pub(crate) fn eval(e: &Expr, props: &Props) -> bool {
    match e {
        Expr::And(a, b) => eval(a, props) && eval(b, props),
        Expr::Or(a, b) => eval(a, props) || eval(b, props),
        Expr::Not(a) => !eval(a, props),
        Expr::Eq(p, l) => lit_matches(get(props, p), l),
        Expr::Ne(p, l) => !lit_matches(get(props, p), l),
        Expr::In(p, ls) => ls.iter().any(|l| lit_matches(get(props, p), l)),
        Expr::StartsWith(p, s) => get(props, p)
            .and_then(Value::as_str)
            .is_some_and(|v| v.to_lowercase().starts_with(&s.to_lowercase())),
        Expr::EndsWith(p, s) => get(props, p)
            .and_then(Value::as_str)
            .is_some_and(|v| v.to_lowercase().ends_with(&s.to_lowercase())),
    }
}

/// `$search="displayName:eng" OR "mail:x"`: each clause matches when a word of the property
/// (or the whole value) starts with the term, case-insensitively. `AND` binds tighter than `OR`.
pub(crate) fn search_matches(search: &str, props: &Props) -> Result<bool, GraphError> {
    let mut any = false;
    for alt in search.split(" OR ") {
        let mut all = true;
        for clause in alt.split(" AND ") {
            let c = clause.trim();
            let c = c
                .strip_prefix('"')
                .and_then(|c| c.strip_suffix('"'))
                .ok_or_else(|| {
                    GraphError::bad_request(format!(
                        "Syntax error: search clause {c} must be \"property:value\" in double quotes."
                    ))
                })?;
            let (prop, term) = c.split_once(':').ok_or_else(|| {
                GraphError::bad_request(format!(
                    "Syntax error: search clause \"{c}\" has no property."
                ))
            })?;
            let term = term.to_lowercase();
            let hit = get(props, prop).and_then(Value::as_str).is_some_and(|v| {
                let v = v.to_lowercase();
                v.starts_with(&term)
                    || v.split(|ch: char| !ch.is_alphanumeric())
                        .any(|w| !w.is_empty() && w.starts_with(&term))
            });
            all &= hit;
        }
        any |= all;
    }
    Ok(any)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn props(v: Value) -> Props {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn quotes_and_operators() {
        let u = props(json!({"department": "R'n'D", "country": "Ireland", "companyName": "X"}));
        let e =
            parse("department eq 'R''n''D' and (country in ('France','ireland') or mail eq null)")
                .unwrap();
        assert!(eval(&e, &u));
        assert!(check(&e, &USER_CAPS, false).is_err(), "eq null is advanced");
        let e = parse("startsWith(department,'r''n')").unwrap();
        assert!(eval(&e, &u));
        check(&e, &USER_CAPS, false).unwrap();
        let e = parse("companyName eq 'X'").unwrap();
        let err = check(&e, &USER_CAPS, false).unwrap_err();
        assert_eq!(err.code, "Request_UnsupportedQuery");
        check(&e, &USER_CAPS, true).unwrap();
        let e = parse("extension_abc_costCenter eq 'CC'").unwrap();
        assert!(check(&e, &USER_CAPS, false).is_err());
        assert!(check(&parse("businessPhones eq 'x'").unwrap(), &USER_CAPS, true).is_err());
    }

    #[test]
    fn search_words() {
        let g = props(json!({"displayName": "Helpdesk Admins"}));
        assert!(search_matches("\"displayName:adm\"", &g).unwrap());
        assert!(!search_matches("\"displayName:dmin\"", &g).unwrap());
    }
}
