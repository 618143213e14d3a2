//! Graph routes under `/v1.0/`: path classification, permissions and the handlers.

use serde_json::{Value, json};

use crate::filter::{self, Caps, Expr, GROUP_CAPS, USER_CAPS};
use crate::odata::{
    GROUP, GraphError, PageToken, Query, ROLE, Schema, USER, parse_select, project,
};
use crate::state::{DeltaExpiry, Directory, Removal};
use crate::tenant::{Props, id_of};

const READ_USERS: &[&str] = &[
    "User.Read.All",
    "User.ReadWrite.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
];
const READ_GROUP_MEMBERS: &[&str] = &[
    "GroupMember.Read.All",
    "GroupMember.ReadWrite.All",
    "Group.Read.All",
    "Group.ReadWrite.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
];
const READ_ROLES: &[&str] = &[
    "RoleManagement.Read.Directory",
    "RoleManagement.Read.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
];

fn has(perms: &[String], any_of: &[&str]) -> bool {
    perms
        .iter()
        .any(|p| any_of.iter().any(|a| a.eq_ignore_ascii_case(p)))
}

/// What a `/v1.0/...` path addresses.
#[derive(Debug)]
pub(crate) enum Target {
    Users,
    UsersCount,
    UsersDelta,
    User(String),
    MemberOf {
        key: String,
        cast: Option<String>,
        transitive: bool,
    },
    CheckMemberGroups(String),
    CheckMemberObjects(String),
    Groups,
    Group(String),
    TransitiveMembers {
        gid: String,
        cast: Option<String>,
    },
    /// `/users/$x…` in key position: rejected with 400 per the OData URL convention.
    BadKey(String),
    Unknown(String),
}

impl Target {
    /// The route name used by counters, faults and delays.
    pub fn route(&self) -> &'static str {
        match self {
            Target::Users | Target::UsersCount => "users",
            Target::UsersDelta => "delta",
            Target::User(_) | Target::BadKey(_) => "user",
            Target::MemberOf {
                transitive: true, ..
            } => "transitiveMemberOf",
            Target::MemberOf { .. } => "memberOf",
            Target::CheckMemberGroups(_) => "checkMemberGroups",
            Target::CheckMemberObjects(_) => "checkMemberObjects",
            Target::Groups => "groups",
            Target::Group(_) => "group",
            Target::TransitiveMembers { .. } => "transitiveMembers",
            Target::Unknown(_) => "unknown",
        }
    }

    fn post(&self) -> bool {
        matches!(
            self,
            Target::CheckMemberGroups(_) | Target::CheckMemberObjects(_)
        )
    }
}

/// `users('o''neil@x')` → `o'neil@x`.
fn paren_key(seg: &str, entity: &str) -> Option<Result<String, String>> {
    let rest = seg.strip_prefix(entity)?.strip_prefix('(')?;
    let inner = rest.strip_suffix(')')?;
    Some(
        inner
            .strip_prefix('\'')
            .and_then(|s| s.strip_suffix('\''))
            .map(|s| s.replace("''", "'"))
            .ok_or_else(|| inner.to_owned()),
    )
}

/// Classifies decoded path segments after `v1.0`.
pub(crate) fn classify(segs: &[String]) -> Target {
    let unknown = || Target::Unknown(segs.join("/"));
    let Some(first) = segs.first() else {
        return unknown();
    };
    let (entity, key, rest): (&str, Option<String>, &[String]) =
        if first == "users" || first == "groups" {
            match segs.get(1) {
                None => (first, None, &[]),
                Some(s) if s.is_empty() && segs.len() == 2 => (first, None, &[]),
                Some(k) => (first, Some(k.clone()), &segs[2..]),
            }
        } else if let Some(r) = paren_key(first, "users") {
            match r {
                Ok(k) => ("users", Some(k), &segs[1..]),
                Err(bad) => return Target::BadKey(bad),
            }
        } else if let Some(r) = paren_key(first, "groups") {
            match r {
                Ok(k) => ("groups", Some(k), &segs[1..]),
                Err(bad) => return Target::BadKey(bad),
            }
        } else {
            return unknown();
        };
    let plain_key = first == "users" || first == "groups";
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    match (entity, key, rest.as_slice()) {
        ("users", None, []) => Target::Users,
        ("users", Some(k), []) if plain_key && k == "$count" => Target::UsersCount,
        ("users", Some(k), []) if plain_key && k == "delta" => Target::UsersDelta,
        ("users" | "groups", Some(k), _) if plain_key && k.starts_with('$') => Target::BadKey(k),
        ("users", Some(k), []) => Target::User(k),
        ("users", Some(key), [nav, cast @ ..]) if cast.len() <= 1 => {
            let cast = cast.first().map(|c| (*c).to_owned());
            match nav.to_ascii_lowercase().as_str() {
                "transitivememberof" => Target::MemberOf {
                    key,
                    cast,
                    transitive: true,
                },
                "memberof" => Target::MemberOf {
                    key,
                    cast,
                    transitive: false,
                },
                "checkmembergroups" if cast.is_none() => Target::CheckMemberGroups(key),
                "checkmemberobjects" if cast.is_none() => Target::CheckMemberObjects(key),
                _ => unknown(),
            }
        }
        ("groups", None, []) => Target::Groups,
        ("groups", Some(k), []) => Target::Group(k),
        ("groups", Some(gid), [nav, cast @ ..])
            if cast.len() <= 1 && nav.eq_ignore_ascii_case("transitiveMembers") =>
        {
            Target::TransitiveMembers {
                gid,
                cast: cast.first().map(|c| (*c).to_owned()),
            }
        }
        _ => unknown(),
    }
}

/// A parsed Graph request as handlers see it.
pub(crate) struct GraphReq<'a> {
    pub method: &'a str,
    /// `http://host:port` as the client addressed us (nextLinks reuse it).
    pub base: String,
    /// Raw request path (still encoded), reused in nextLinks.
    pub path: &'a str,
    pub query: Query,
    /// `ConsistencyLevel: eventual` was sent.
    pub eventual: bool,
    pub perms: Vec<String>,
    pub body: &'a [u8],
    pub page_size: Option<usize>,
    /// At most this many items per page, whatever `$top` says.
    pub page_cap: Option<usize>,
    pub delta_expired_upto: Option<(u64, DeltaExpiry)>,
}

pub(crate) enum Reply {
    Json(Value),
    Text(String),
}

fn require(ok: bool) -> Result<(), GraphError> {
    if ok {
        Ok(())
    } else {
        Err(GraphError::denied())
    }
}

pub(crate) fn handle(t: Target, r: &GraphReq, dir: &mut Directory) -> Result<Reply, GraphError> {
    let want_post = t.post();
    let wrong_method = (r.method == "POST") != want_post || !matches!(r.method, "GET" | "POST");
    if wrong_method && !matches!(t, Target::Unknown(_)) {
        return Err(GraphError::new(
            405,
            "Request_BadRequest",
            "Specified HTTP method is not allowed for the request target.",
        ));
    }
    match t {
        Target::Unknown(p) => Err(GraphError::new(
            400,
            "BadRequest",
            format!(
                "Resource not found for the segment '{}'.",
                p.split('/').next_back().unwrap_or("")
            ),
        )),
        Target::BadKey(k) => Err(GraphError::bad_request(format!(
            "Invalid object identifier '{k}'. Keys starting with '$' violate the OData URL convention; use users('{k}')."
        ))),
        Target::User(key) => get_user(r, dir, &key),
        Target::Users => list(r, dir, Kind::Users),
        Target::Groups => list(r, dir, Kind::Groups),
        Target::UsersCount => users_count(r, dir),
        Target::Group(gid) => get_group(r, dir, &gid),
        Target::MemberOf {
            key,
            cast,
            transitive,
        } => member_of(r, dir, &key, cast, transitive),
        Target::TransitiveMembers { gid, cast } => transitive_members(r, dir, &gid, cast),
        Target::CheckMemberGroups(key) => check_member(r, dir, &key, true),
        Target::CheckMemberObjects(key) => check_member(r, dir, &key, false),
        Target::UsersDelta => delta(r, dir),
    }
}

fn context(r: &GraphReq, set: &str, select: Option<&str>, entity: bool) -> String {
    let sel = select.map(|s| format!("({s})")).unwrap_or_default();
    let ent = if entity { "/$entity" } else { "" };
    format!("{}/v1.0/$metadata#{set}{sel}{ent}", r.base)
}

fn get_user(r: &GraphReq, dir: &Directory, key: &str) -> Result<Reply, GraphError> {
    require(has(&r.perms, READ_USERS))?;
    let select = parse_select(r.query.get("$select"), &[&USER])?;
    let i = dir
        .find_user(key)
        .ok_or_else(|| GraphError::not_found(key))?;
    let mut out = Props::new();
    out.insert(
        "@odata.context".into(),
        context(r, "users", r.query.get("$select"), true).into(),
    );
    out.extend(project(
        &dir.users[i].props,
        &USER,
        select.as_deref(),
        false,
    ));
    Ok(Reply::Json(Value::Object(out)))
}

fn get_group(r: &GraphReq, dir: &Directory, gid: &str) -> Result<Reply, GraphError> {
    require(has(&r.perms, READ_GROUP_MEMBERS))?;
    let select = parse_select(r.query.get("$select"), &[&GROUP])?;
    let (g, role) = dir.group(gid).ok_or_else(|| GraphError::not_found(gid))?;
    if role {
        return Err(GraphError::not_found(gid));
    }
    let mut out = Props::new();
    out.insert(
        "@odata.context".into(),
        context(r, "groups", r.query.get("$select"), true).into(),
    );
    out.extend(project(g, &GROUP, select.as_deref(), false));
    Ok(Reply::Json(Value::Object(out)))
}

fn users_count(r: &GraphReq, dir: &Directory) -> Result<Reply, GraphError> {
    require(has(&r.perms, READ_USERS))?;
    if !r.eventual {
        return Err(GraphError::bad_request(
            "$count is not currently supported.",
        ));
    }
    let n = dir.users.iter().filter(|u| u.removed.is_none()).count();
    Ok(Reply::Text(n.to_string()))
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Users,
    Groups,
}

/// The list parameters: from the first request, or from the skiptoken of a nextLink.
struct ListParams {
    token: PageToken,
    first_page: bool,
}

fn list_params(r: &GraphReq, route: &str, key: Option<String>) -> Result<ListParams, GraphError> {
    if let Some(tok) = r.query.get("$skiptoken") {
        let token = PageToken::decode(tok, route)?;
        if token.k != key {
            return Err(GraphError::bad_request(
                "Skip token does not belong to this resource.",
            ));
        }
        if token.adv && !r.eventual {
            return Err(GraphError::unsupported(
                "This page belongs to an advanced query: resend the 'ConsistencyLevel: eventual' header on every nextLink request.",
            ));
        }
        return Ok(ListParams {
            token,
            first_page: false,
        });
    }
    Ok(ListParams {
        token: PageToken {
            r: route.into(),
            k: key,
            filter: r.query.get("$filter").map(str::to_owned),
            select: r.query.get("$select").map(str::to_owned),
            search: r.query.get("$search").map(str::to_owned),
            orderby: r.query.get("$orderby").map(str::to_owned),
            top: r
                .query
                .top(999)?
                .or(r.page_size)
                .unwrap_or(100)
                .min(r.page_cap.unwrap_or(usize::MAX)),
            ..PageToken::default()
        },
        first_page: true,
    })
}

/// Validates `$filter`/`$search`/`$orderby` for a collection, returning the parsed filter.
/// Sets `token.adv` when the query needs the advanced parameters.
fn prepare_query(
    r: &GraphReq,
    p: &mut ListParams,
    caps: &Caps,
    always_advanced: bool,
) -> Result<Option<Expr>, GraphError> {
    let advanced = r.eventual && (r.query.count_true() || !p.first_page);
    let expr = p.token.filter.as_deref().map(filter::parse).transpose()?;
    if p.first_page {
        if let Some(e) = &expr {
            if always_advanced && !advanced {
                return Err(GraphError::unsupported(
                    "Operator 'filter' is not supported because the required parameters might be missing. Try adding $count=true query parameter and ConsistencyLevel:eventual header. Refer to https://aka.ms/graph-docs/advanced-queries for more information",
                ));
            }
            filter::check(e, caps, advanced)?;
            p.token.adv |= filter::check(e, caps, false).is_err() || always_advanced;
        }
        if p.token.search.is_some() {
            if !r.eventual {
                return Err(GraphError::unsupported(
                    "Request with $search query parameter only works through MSGraph with a special request header: 'ConsistencyLevel: eventual'",
                ));
            }
            p.token.adv = true;
        }
        if p.token.orderby.is_some() && expr.is_some() {
            if !advanced {
                return Err(GraphError::unsupported(
                    "Sorting not supported for current query.",
                ));
            }
            p.token.adv = true;
        }
    }
    Ok(expr)
}

fn matches(expr: &Option<Expr>, search: Option<&str>, props: &Props) -> Result<bool, GraphError> {
    if let Some(e) = expr
        && !filter::eval(e, props)
    {
        return Ok(false);
    }
    match search {
        Some(s) => filter::search_matches(s, props),
        None => Ok(true),
    }
}

fn sort(items: &mut [&Props], orderby: Option<&str>) -> Result<(), GraphError> {
    let Some(ob) = orderby else { return Ok(()) };
    let mut parts = ob.split_whitespace();
    let prop = parts.next().unwrap_or("displayName").to_owned();
    let desc = match parts.next() {
        None => false,
        Some(d) if d.eq_ignore_ascii_case("asc") => false,
        Some(d) if d.eq_ignore_ascii_case("desc") => true,
        Some(d) => {
            return Err(GraphError::bad_request(format!(
                "Invalid $orderby direction '{d}'."
            )));
        }
    };
    let key = |p: &Props| {
        p.get(&prop)
            .and_then(Value::as_str)
            .map(str::to_lowercase)
            .unwrap_or_default()
    };
    items.sort_by_key(|p| key(p));
    if desc {
        items.reverse();
    }
    Ok(())
}

/// One page of a collection: `@odata.context`, optional `@odata.count`, `value`, nextLink.
fn page(r: &GraphReq, p: &ListParams, ctx: String, items: Vec<Value>) -> Reply {
    let total = items.len();
    let size = p.token.top.max(1);
    let off = p.token.off.min(total);
    let end = (off + size).min(total);
    let mut out = Props::new();
    out.insert("@odata.context".into(), ctx.into());
    if p.first_page && r.eventual && r.query.count_true() {
        out.insert("@odata.count".into(), total.into());
    }
    if end < total {
        let next = PageToken {
            off: end,
            ..p.token.clone()
        };
        let top = r
            .query
            .get("$top")
            .filter(|_| p.first_page)
            .map(|t| format!("$top={t}&"))
            .unwrap_or_default();
        out.insert(
            "@odata.nextLink".into(),
            format!("{}{}?{top}$skiptoken={}", r.base, r.path, next.encode()).into(),
        );
    }
    out.insert(
        "value".into(),
        Value::Array(items.into_iter().skip(off).take(end - off).collect()),
    );
    Reply::Json(Value::Object(out))
}

fn list(r: &GraphReq, dir: &Directory, kind: Kind) -> Result<Reply, GraphError> {
    let (route, caps, schema, set): (&str, &Caps, &Schema, &str) = match kind {
        Kind::Users => ("users", &USER_CAPS, &USER, "users"),
        Kind::Groups => ("groups", &GROUP_CAPS, &GROUP, "groups"),
    };
    let ok = match kind {
        Kind::Users => has(&r.perms, READ_USERS),
        Kind::Groups => has(&r.perms, READ_GROUP_MEMBERS),
    };
    require(ok)?;
    let mut p = list_params(r, route, None)?;
    let select = parse_select(p.token.select.as_deref(), &[schema])?;
    let expr = prepare_query(r, &mut p, caps, false)?;
    let search = p.token.search.clone();
    let mut items: Vec<&Props> = Vec::new();
    match kind {
        Kind::Users => {
            for u in dir.users.iter().filter(|u| u.removed.is_none()) {
                if matches(&expr, search.as_deref(), &u.props)? {
                    items.push(&u.props);
                }
            }
        }
        Kind::Groups => {
            for g in &dir.groups {
                if matches(&expr, search.as_deref(), g)? {
                    items.push(g);
                }
            }
        }
    }
    sort(&mut items, p.token.orderby.as_deref())?;
    let values = items
        .into_iter()
        .map(|x| Value::Object(project(x, schema, select.as_deref(), false)))
        .collect();
    let ctx = context(r, set, p.token.select.as_deref(), false);
    Ok(page(r, &p, ctx, values))
}

fn typed(type_name: &str, props: Props) -> Value {
    let mut out = Props::new();
    out.insert(
        "@odata.type".into(),
        format!("#microsoft.graph.{type_name}").into(),
    );
    out.extend(props);
    Value::Object(out)
}

/// Normalises an OData cast segment: `microsoft.graph.group` → `group`.
fn cast_type(cast: &Option<String>, allowed: &[&str]) -> Result<Option<String>, GraphError> {
    let Some(c) = cast else { return Ok(None) };
    let lc = c.to_ascii_lowercase();
    let name = lc.strip_prefix("microsoft.graph.").ok_or_else(|| {
        GraphError::new(
            400,
            "BadRequest",
            format!("Resource not found for the segment '{c}'."),
        )
    })?;
    allowed
        .iter()
        .find(|a| a.eq_ignore_ascii_case(name))
        .map(|a| Some((*a).to_owned()))
        .ok_or_else(|| {
            GraphError::unsupported(format!(
                "The type 'microsoft.graph.{name}' is not a valid cast here."
            ))
        })
}

fn member_of(
    r: &GraphReq,
    dir: &Directory,
    key: &str,
    cast: Option<String>,
    transitive: bool,
) -> Result<Reply, GraphError> {
    require(has(&r.perms, READ_USERS) || has(&r.perms, READ_GROUP_MEMBERS))?;
    let cast = cast_type(&cast, &["group", "directoryRole", "administrativeUnit"])?;
    let i = dir
        .find_user(key)
        .ok_or_else(|| GraphError::not_found(key))?;
    let uid = id_of(&dir.users[i].props);
    let route = if transitive {
        "transitiveMemberOf"
    } else {
        "memberOf"
    };
    let mut p = list_params(
        r,
        route,
        Some(format!("{uid}/{}", cast.as_deref().unwrap_or(""))),
    )?;
    let select = parse_select(p.token.select.as_deref(), &[&GROUP, &ROLE])?;
    let expr = prepare_query(r, &mut p, &GROUP_CAPS, true)?;
    let search = p.token.search.clone();
    let groups_limited = !has(&r.perms, READ_GROUP_MEMBERS);
    let roles_limited = !has(&r.perms, READ_ROLES);
    let mut values = Vec::new();
    for gid in dir.member_of(&uid, !transitive) {
        let Some((g, role)) = dir.group(&gid) else {
            continue;
        };
        let type_name = if role { "directoryRole" } else { "group" };
        if cast.as_deref().is_some_and(|c| c != type_name) {
            continue;
        }
        if !matches(&expr, search.as_deref(), g)? {
            continue;
        }
        let (schema, limited) = if role {
            (&ROLE, roles_limited)
        } else {
            (&GROUP, groups_limited)
        };
        values.push(typed(
            type_name,
            project(g, schema, select.as_deref(), limited),
        ));
    }
    let set = match cast.as_deref() {
        Some("group") => "groups",
        Some("directoryRole") => "directoryRoles",
        Some(_) => "administrativeUnits",
        None => "directoryObjects",
    };
    let ctx = context(r, set, p.token.select.as_deref(), false);
    Ok(page(r, &p, ctx, values))
}

fn transitive_members(
    r: &GraphReq,
    dir: &Directory,
    gid: &str,
    cast: Option<String>,
) -> Result<Reply, GraphError> {
    require(has(&r.perms, READ_GROUP_MEMBERS))?;
    let cast = cast_type(&cast, &["user", "group"])?;
    match dir.group(gid) {
        Some((_, false)) => {}
        _ => return Err(GraphError::not_found(gid)),
    }
    let mut p = list_params(
        r,
        "transitiveMembers",
        Some(format!(
            "{}/{}",
            gid.to_lowercase(),
            cast.as_deref().unwrap_or("")
        )),
    )?;
    let select = parse_select(p.token.select.as_deref(), &[&USER, &GROUP])?;
    let caps = if cast.as_deref() == Some("group") {
        &GROUP_CAPS
    } else {
        &USER_CAPS
    };
    let expr = prepare_query(r, &mut p, caps, true)?;
    let search = p.token.search.clone();
    let mut values = Vec::new();
    for m in dir.transitive_members(gid) {
        let (props, type_name, schema) = if let Some(i) = dir.find_user(&m) {
            (&dir.users[i].props, "user", &USER)
        } else if let Some((g, false)) = dir.group(&m) {
            (g, "group", &GROUP)
        } else {
            continue;
        };
        if cast.as_deref().is_some_and(|c| c != type_name)
            || !matches(&expr, search.as_deref(), props)?
        {
            continue;
        }
        values.push(typed(
            type_name,
            project(props, schema, select.as_deref(), false),
        ));
    }
    let set = match cast.as_deref() {
        Some("user") => "users",
        Some(_) => "groups",
        None => "directoryObjects",
    };
    let ctx = context(r, set, p.token.select.as_deref(), false);
    Ok(page(r, &p, ctx, values))
}

fn check_member(
    r: &GraphReq,
    dir: &Directory,
    key: &str,
    groups_only: bool,
) -> Result<Reply, GraphError> {
    let ok = if groups_only {
        (has(&r.perms, READ_USERS) && has(&r.perms, READ_GROUP_MEMBERS))
            || has(&r.perms, &["Directory.Read.All", "Directory.ReadWrite.All"])
    } else {
        has(&r.perms, READ_USERS)
    };
    require(ok)?;
    let field = if groups_only { "groupIds" } else { "ids" };
    let body: Value = serde_json::from_slice(r.body)
        .map_err(|e| GraphError::bad_request(format!("Invalid request body: {e}")))?;
    let ids: Vec<String> = body
        .get(field)
        .and_then(Value::as_array)
        .ok_or_else(|| {
            GraphError::bad_request(format!("The request body must contain '{field}'."))
        })?
        .iter()
        .map(|v| v.as_str().map(str::to_owned))
        .collect::<Option<_>>()
        .ok_or_else(|| {
            GraphError::bad_request(format!("'{field}' must be an array of strings."))
        })?;
    if ids.len() > 20 {
        return Err(GraphError::bad_request(format!(
            "Too many ids in '{field}': {} given, at most 20 are allowed.",
            ids.len()
        )));
    }
    let i = dir
        .find_user(key)
        .ok_or_else(|| GraphError::not_found(key))?;
    let uid = id_of(&dir.users[i].props);
    let member_of: Vec<String> = dir
        .member_of(&uid, false)
        .into_iter()
        .filter(|g| !groups_only || matches!(dir.group(g), Some((_, false))))
        .collect();
    let hits: Vec<Value> = ids
        .into_iter()
        .filter(|id| member_of.contains(&id.to_lowercase()))
        .map(Value::from)
        .collect();
    Ok(Reply::Json(json!({
        "@odata.context": format!("{}/v1.0/$metadata#Collection(Edm.String)", r.base),
        "value": hits,
    })))
}

fn delta_expired(r: &GraphReq, seq: u64) -> Result<(), GraphError> {
    let Some((upto, mode)) = r.delta_expired_upto else {
        return Ok(());
    };
    if seq > upto {
        return Ok(());
    }
    let msg = "The sync state generation is not found. The delta token is expired and data must be synchronized again.";
    Err(match mode {
        DeltaExpiry::BadRequestSyncStateNotFound => GraphError::new(400, "syncStateNotFound", msg),
        DeltaExpiry::GoneSyncStateNotFound => GraphError::new(410, "syncStateNotFound", msg),
        DeltaExpiry::GoneReset => GraphError::new(
            410,
            "resyncRequired",
            "Synchronization reset: restart with a full synchronization from the URL in the Location header.",
        )
        .header("Location", format!("{}/v1.0/users/delta?$deltatoken=", r.base)),
        DeltaExpiry::ResyncRequired => GraphError::new(
            400,
            "resyncRequired",
            "The delta token is no longer valid, and the app must reset the sync state.",
        ),
    })
}

fn delta(r: &GraphReq, dir: &Directory) -> Result<Reply, GraphError> {
    require(has(&r.perms, READ_USERS))?;
    let skip = r.query.get("$skiptoken");
    let dtok = r.query.get("$deltatoken").filter(|t| !t.is_empty());
    let latest = dtok.is_some_and(|t| t.eq_ignore_ascii_case("latest"));
    if (skip.is_some() || (dtok.is_some() && !latest)) && r.query.get("$select").is_some() {
        return Err(GraphError::bad_request(
            "$select is not supported together with $skiptoken or $deltatoken: the query is encoded in the token; call the link as given.",
        ));
    }
    let (token, first_page) = if let Some(s) = skip {
        let t = PageToken::decode(s, "delta")?;
        delta_expired(r, t.snap)?;
        (t, false)
    } else if let Some(d) = dtok.filter(|_| !latest) {
        let t = PageToken::decode(d, "deltaLink")?;
        delta_expired(r, t.since.unwrap_or(0))?;
        (
            PageToken {
                r: "delta".into(),
                since: t.since,
                snap: dir.seq,
                select: t.select,
                top: r.page_size.unwrap_or(100),
                ..PageToken::default()
            },
            true,
        )
    } else {
        (
            PageToken {
                r: "delta".into(),
                select: r.query.get("$select").map(str::to_owned),
                snap: dir.seq,
                top: r.page_size.unwrap_or(100),
                ..PageToken::default()
            },
            true,
        )
    };
    let select = parse_select(token.select.as_deref(), &[&USER])?;
    let ctx = context(
        r,
        "users",
        token.select.as_deref().filter(|_| first_page),
        false,
    );
    let delta_link = |snap: u64| {
        let t = PageToken {
            r: "deltaLink".into(),
            since: Some(snap),
            select: token.select.clone(),
            ..PageToken::default()
        };
        format!("{}/v1.0/users/delta?$deltatoken={}", r.base, t.encode())
    };
    if latest {
        return Ok(Reply::Json(json!({
            "@odata.context": ctx,
            "@odata.deltaLink": delta_link(dir.seq),
            "value": [],
        })));
    }
    let mut values = Vec::new();
    for u in &dir.users {
        let changed = token.since.is_none_or(|s| u.changed_at > s);
        if !changed || (token.since.is_none() && u.removed.is_some()) {
            continue;
        }
        let v = match u.removed {
            Some(how) => json!({
                "id": id_of(&u.props),
                "@removed": {"reason": match how { Removal::Soft => "changed", Removal::Hard => "deleted" }},
            }),
            None => {
                let mut p = project(&u.props, &USER, select.as_deref(), false);
                p.retain(|_, v| !v.is_null());
                p.insert(
                    "id".into(),
                    u.props.get("id").cloned().unwrap_or(Value::Null),
                );
                Value::Object(p)
            }
        };
        values.push(v);
    }
    let total = values.len();
    let size = token.top.max(1);
    let off = token.off.min(total);
    let end = (off + size).min(total);
    let mut out = Props::new();
    out.insert("@odata.context".into(), ctx.into());
    if end < total {
        let next = PageToken {
            off: end,
            ..token.clone()
        };
        out.insert(
            "@odata.nextLink".into(),
            format!("{}/v1.0/users/delta?$skiptoken={}", r.base, next.encode()).into(),
        );
    } else {
        out.insert("@odata.deltaLink".into(), delta_link(token.snap).into());
    }
    out.insert(
        "value".into(),
        Value::Array(values.into_iter().skip(off).take(end - off).collect()),
    );
    Ok(Reply::Json(Value::Object(out)))
}
