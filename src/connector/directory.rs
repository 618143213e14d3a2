//! The connector's directory side: answers the service's `Operation`s from AD or OpenLDAP with
//! `ldap3`. Owns the service-account connections (URL fail-over, TLS roots, idle close), paging
//! cursors (RFC 2696 cookies are bound to their connection, so a cursor keeps both), user
//! look-ups with transitive groups, password checks on a connection of their own, and `check`
//! for `imd connector check`. Read-only: nothing here writes to the directory.
//!
//! Two kinds of service-account connection: *shared* ones (up to `pool_size`), on which plain
//! searches are multiplexed (LDAP allows many outstanding operations per connection; each
//! operation gets its own `Ldap` clone, at most `MAX_IN_FLIGHT` per connection, least-loaded
//! first), and *exclusive* ones (a pool of `pool_size` as well), checked out by one operation at
//! a time: paging cursors, and a search whose results do not fit one page (OpenLDAP keeps one
//! paged-results state per connection, so paging never continues on a shared connection).
//!
//! Safety rules kept throughout: every value put into a filter is escaped (`escape`), DNs from
//! the server are used verbatim, referrals are never chased (`Ldap::search` drops them), and an
//! empty password is refused before any network I/O (it would be an anonymous bind).

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ldap3::controls::{Control, ControlType, PagedResults};
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, LdapError, LdapResult, Scope, SearchEntry};
use ldap3::{SearchOptions, SearchResult};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::connector::config::{AttributeMap, ConnectorConfig, DirectoryConfig};
use crate::connector::escape;
use crate::connector::proto::{
    DirEntry, DirUser, DirectoryKind, OpError, OpErrorCode, OpResult, Operation, PasswordCheck,
    PasswordVerdict, RootDse,
};

const PAGED_OID: &str = "1.2.840.113556.1.4.319";
const IN_CHAIN: &str = "1.2.840.113556.1.4.1941";
/// A paging cursor unused for this long is dropped (its connection closed).
pub const CURSOR_IDLE: Duration = Duration::from_secs(120);
/// At most this many open cursors (each holds a connection); the least recently used goes.
const MAX_CURSORS: usize = 64;
/// Group → parent groups, cached between the pages of one sync.
const GROUP_CACHE_TTL: Duration = Duration::from_secs(60);
/// After fail-over, the first URLs are tried again after this long.
const PREFER_RESET: Duration = Duration::from_secs(300);
/// Longer logins/UPNs cannot be real accounts; answered "no such user" without a query.
const MAX_NAME_LEN: usize = 1024;
/// Entries listed by `ListOus` (one level) at most.
const MAX_LIST: usize = 10_000;
/// Page size of internally paged searches (`search_all`).
const ALL_PAGE: i32 = 500;
/// Operations outstanding at once on one shared connection, at most.
const MAX_IN_FLIGHT: usize = 32;

type OpRes<T> = Result<T, OpError>;

fn err(code: OpErrorCode, msg: impl Into<String>) -> OpError {
    OpError::new(code, msg)
}

/// The directory behind the connector; cheap to clone (shared state).
#[derive(Clone)]
pub struct Directory {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: DirectoryConfig,
    attrs: AttributeMap,
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
    /// Exclusive connections: one operation at a time each (cursors, multi-page searches).
    permits: Arc<Semaphore>,
    idle: Mutex<Vec<Conn>>,
    /// Shared connections, multiplexed.
    shared: Mutex<SharedSet>,
    /// Woken when a shared connection gets a free slot or a connect attempt ends.
    shared_freed: tokio::sync::Notify,
    /// Index into `urls` that answered last, and since when.
    preferred: Mutex<(usize, Instant)>,
    last_url: Mutex<Option<String>>,
    cursors: Mutex<HashMap<String, Cursor>>,
    domain: tokio::sync::OnceCell<DomainNames>,
    group_parents: Mutex<HashMap<String, (Instant, Vec<String>)>>,
    /// OpenLDAP look-ups: group → groups naming it in `member`/`uniqueMember`.
    nested_parents: Mutex<HashMap<String, (Instant, Vec<String>)>>,
}

#[derive(Clone, Debug, Default)]
struct DomainNames {
    netbios: Option<String>,
    dns: Option<String>,
}

struct Conn {
    ldap: Ldap,
    url: String,
    last_used: Instant,
}

#[derive(Default)]
struct SharedSet {
    conns: Vec<SharedConn>,
    /// Connect attempts under way (they count against `pool_size`).
    connecting: usize,
    next_id: u64,
}

struct SharedConn {
    id: u64,
    ldap: Ldap,
    url: String,
    in_flight: usize,
    last_used: Instant,
}

/// One operation's handle on a shared connection: its own `Ldap` clone (so `with_timeout` and
/// controls apply to this operation only) and a slot of the connection's `MAX_IN_FLIGHT`.
/// `settle` gives the slot back and retires the connection after a transport error or a
/// timeout; dropped unsettled (the operation was cancelled) the connection is retired too, as
/// an exclusive connection would be discarded. A retired connection takes no new operations
/// and closes when its last clone is dropped.
struct Shared {
    ldap: Ldap,
    url: String,
    id: u64,
    inner: Arc<Inner>,
    settled: bool,
}

impl Shared {
    fn ldap(&mut self) -> &mut Ldap {
        &mut self.ldap
    }

    fn settle<T>(mut self, r: OpRes<T>) -> OpRes<T> {
        let broken = matches!(
            &r,
            Err(e) if matches!(e.code, OpErrorCode::Timeout | OpErrorCode::DirectoryUnavailable)
        );
        self.settled = true;
        self.inner
            .shared_done(self.id, broken || self.ldap.is_closed());
        r
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if !self.settled {
            self.inner.shared_done(self.id, true);
        }
    }
}

/// Gives back a connect attempt's place in `SharedSet::connecting`, also when cancelled.
struct Connecting<'a>(&'a Inner);

impl Drop for Connecting<'_> {
    fn drop(&mut self) {
        self.0.shared.lock().expect("lock").connecting -= 1;
        self.0.shared_freed.notify_waiters();
    }
}

/// An exclusive connection checked out for one operation. Dropped without `release` (after a
/// transport error) it is discarded, not returned.
struct Pooled {
    conn: Option<Conn>,
    _permit: OwnedSemaphorePermit,
    inner: Arc<Inner>,
}

impl Pooled {
    fn ldap(&mut self) -> &mut Ldap {
        &mut self.conn.as_mut().expect("connection").ldap
    }
    fn release(mut self) {
        if let Some(c) = self.conn.take() {
            self.inner.give_back(c);
        }
    }
    fn detach(mut self) -> Conn {
        self.conn.take().expect("connection")
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum CursorKind {
    Users,
    Groups,
}

struct Cursor {
    kind: CursorKind,
    /// The next page, already being fetched: a listing pages at the directory's pace while
    /// the previous page travels to the service and is processed there.
    ahead: ReadAhead,
    base: String,
    filter: String,
    page_size: u32,
    last_used: Instant,
}

type Fetched = (Conn, OpRes<(Vec<SearchEntry>, Vec<u8>)>);

/// A page being fetched with the cursor's connection; dropping it (an expired or evicted
/// cursor) stops the fetch and closes the connection.
struct ReadAhead(Option<tokio::task::JoinHandle<Fetched>>);

impl ReadAhead {
    #[allow(clippy::too_many_arguments)]
    fn start(
        mut conn: Conn,
        to: Duration,
        base: String,
        filter: String,
        attrs: Vec<String>,
        size: u32,
        cookie: Vec<u8>,
    ) -> ReadAhead {
        ReadAhead(Some(tokio::spawn(async move {
            let r = search_page(&mut conn.ldap, to, &base, &filter, &attrs, size, cookie).await;
            (conn, r)
        })))
    }

    async fn join(mut self) -> Option<Fetched> {
        self.0.take()?.await.ok()
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
}

struct Lookup {
    login: Option<String>,
    domain: Option<String>,
    upn: Option<String>,
    filters: Vec<String>,
}

impl Directory {
    /// Builds the directory client; connects lazily. Fails only on a bad `ca_file`.
    pub fn new(config: &ConnectorConfig) -> OpRes<Directory> {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let cfg = config.directory.clone();
        let tls = match &cfg.ca_file {
            Some(p) => Some(tls_config(p).map_err(|m| err(OpErrorCode::Internal, m))?),
            None => None,
        };
        let inner = Arc::new(Inner {
            attrs: cfg.attributes(),
            timeout: Duration::from_secs(cfg.timeout_secs),
            permits: Arc::new(Semaphore::new(cfg.pool_size)),
            idle: Mutex::new(Vec::new()),
            shared: Mutex::new(SharedSet::default()),
            shared_freed: tokio::sync::Notify::new(),
            preferred: Mutex::new((0, Instant::now())),
            last_url: Mutex::new(None),
            cursors: Mutex::new(HashMap::new()),
            domain: tokio::sync::OnceCell::new(),
            group_parents: Mutex::new(HashMap::new()),
            nested_parents: Mutex::new(HashMap::new()),
            tls,
            cfg,
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(reaper(Arc::downgrade(&inner)));
        }
        Ok(Directory { inner })
    }

    pub fn kind(&self) -> DirectoryKind {
        self.inner.cfg.kind
    }

    /// The URL of the last successful connection.
    pub fn last_url(&self) -> Option<String> {
        self.inner.last_url.lock().expect("lock").clone()
    }

    /// Shared (multiplexed) service-account connections open now; at most `pool_size`.
    pub fn shared_connections(&self) -> usize {
        self.inner.shared_count()
    }

    /// Answers one operation. The channel puts its deadline around this call.
    pub async fn execute(&self, op: Operation) -> Result<OpResult, OpError> {
        let name = op.name();
        tracing::debug!(op = name, "directory operation");
        let r = match op {
            Operation::RootDse => self.root_dse().await.map(OpResult::RootDse),
            Operation::ListOus { base } => self.list_ous(base).await,
            Operation::ListGroups {
                base,
                prefix,
                page_size,
                cursor,
            } => self.list_groups(base, prefix, page_size, cursor).await,
            Operation::SearchUsers {
                base,
                filter,
                page_size,
                cursor,
            } => self.search_users(base, filter, page_size, cursor).await,
            Operation::LookupUser {
                login,
                domain,
                upn,
                filters,
            } => self
                .lookup_user(&Lookup {
                    login,
                    domain,
                    upn,
                    filters,
                })
                .await
                .map(|user| OpResult::User { user }),
            Operation::VerifyPassword {
                login,
                domain,
                upn,
                password,
                filters,
            } => self
                .verify_password(
                    &Lookup {
                        login,
                        domain,
                        upn,
                        filters,
                    },
                    &password,
                )
                .await
                .map(OpResult::Password),
        };
        if let Err(e) = &r {
            tracing::debug!(op = name, code = ?e.code, message = %e.message, "directory operation failed");
        }
        r
    }

    // ---- root DSE -------------------------------------------------------------------------

    async fn root_dse(&self) -> OpRes<RootDse> {
        let mut c = self.inner.shared().await?;
        let url = c.url.clone();
        let r = self.root_dse_on(c.ldap(), url).await;
        c.settle(r)
    }

    async fn root_dse_on(&self, ldap: &mut Ldap, url: String) -> OpRes<RootDse> {
        let attrs = [
            "namingContexts",
            "defaultNamingContext",
            "configurationNamingContext",
            "dnsHostName",
            "currentTime",
            "supportedControl",
            "vendorName",
            "vendorVersion",
        ];
        let to = self.inner.timeout;
        let res = ldap
            .with_timeout(to)
            .search("", Scope::Base, "(objectClass=*)", attrs.to_vec())
            .await
            .map_err(map_ldap_err)?;
        let (entries, _) = check_result(res, "the root DSE")?;
        let e = entries
            .into_iter()
            .next()
            .ok_or_else(|| err(OpErrorCode::Internal, "the directory returned no root DSE"))?;
        let default_nc = first(&e, "defaultNamingContext");
        let mut names = DomainNames::default();
        if let (Some(config_nc), Some(dnc)) = (first(&e, "configurationNamingContext"), &default_nc)
        {
            names = read_domain_names(ldap, to, &config_nc, dnc).await?;
            let _ = self.inner.domain.set(names.clone());
        }
        let supports_paging = all(&e, "supportedControl").iter().any(|o| o == PAGED_OID);
        Ok(RootDse {
            directory_kind: self.inner.cfg.kind,
            naming_contexts: all(&e, "namingContexts"),
            default_naming_context: default_nc,
            base_dn: self.inner.cfg.base_dn.clone(),
            server: first(&e, "dnsHostName").unwrap_or(url),
            server_time: first(&e, "currentTime")
                .and_then(|t| escape::generalized_time_to_rfc3339(&t)),
            supports_paging,
            netbios_domain: names.netbios,
            dns_domain: names.dns,
            vendor: match (first(&e, "vendorName"), first(&e, "vendorVersion")) {
                (Some(n), Some(v)) => Some(format!("{n} {v}")),
                (n, _) => n,
            },
        })
    }

    async fn domain_names(&self) -> OpRes<DomainNames> {
        if let Some(d) = self.inner.domain.get() {
            return Ok(d.clone());
        }
        let d = self.root_dse().await?;
        Ok(DomainNames {
            netbios: d.netbios_domain,
            dns: d.dns_domain,
        })
    }

    // ---- browsing -------------------------------------------------------------------------

    fn base(&self, base: Option<String>) -> OpRes<String> {
        let cfg_base = &self.inner.cfg.base_dn;
        let base = base
            .filter(|b| !b.trim().is_empty())
            .unwrap_or_else(|| cfg_base.clone());
        if !escape::dn_within(&base, cfg_base) {
            return Err(err(
                OpErrorCode::NotFound,
                format!("base DN {base:?} is outside the configured base DN {cfg_base:?}"),
            ));
        }
        Ok(base)
    }

    async fn list_ous(&self, base: Option<String>) -> OpRes<OpResult> {
        let base = self.base(base)?;
        let mut c = self.inner.shared().await?;
        let r = self
            .inner
            .search_all_shared(
                c.ldap(),
                &base,
                Scope::OneLevel,
                "(|(objectClass=organizationalUnit)(objectClass=container))",
                &["ou", "cn", "objectClass"],
            )
            .await;
        let entries = c.settle(r)?;
        let mut items: Vec<DirEntry> = entries
            .iter()
            .map(|e| {
                let classes = all(e, "objectClass");
                let is_ou = classes
                    .iter()
                    .any(|c| c.eq_ignore_ascii_case("organizationalUnit"));
                DirEntry {
                    dn: e.dn.clone(),
                    name: first(e, "ou")
                        .or_else(|| first(e, "cn"))
                        .or_else(|| escape::first_rdn_value(&e.dn))
                        .unwrap_or_default(),
                    class: if is_ou {
                        "organizationalUnit"
                    } else {
                        "container"
                    }
                    .to_owned(),
                }
            })
            .collect();
        items.sort_by_key(|e| e.name.to_lowercase());
        Ok(OpResult::Entries {
            items,
            next_cursor: None,
        })
    }

    fn group_class_filter(&self) -> &'static str {
        match self.inner.cfg.kind {
            DirectoryKind::Ad => "(objectClass=group)",
            DirectoryKind::Openldap => {
                "(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames)(objectClass=posixGroup))"
            }
        }
    }

    fn user_class_filter(&self) -> &'static str {
        match self.inner.cfg.kind {
            DirectoryKind::Ad => "(&(objectCategory=person)(objectClass=user))",
            DirectoryKind::Openldap => "(|(objectClass=inetOrgPerson)(objectClass=posixAccount))",
        }
    }

    async fn list_groups(
        &self,
        base: Option<String>,
        prefix: Option<String>,
        page_size: u32,
        cursor: Option<String>,
    ) -> OpRes<OpResult> {
        let (entries, next_cursor) = match cursor {
            Some(id) => self.next_page(CursorKind::Groups, &id).await?,
            None => {
                let base = self.base(base)?;
                let prefix = prefix.unwrap_or_default();
                let filter = format!(
                    "(&{}(cn={}*))",
                    self.group_class_filter(),
                    escape::filter_value(&prefix)
                );
                self.first_page(CursorKind::Groups, base, filter, page_size)
                    .await?
            }
        };
        let items = entries
            .iter()
            .map(|e| {
                let classes = all(e, "objectClass");
                let class = ["group", "groupOfNames", "groupOfUniqueNames", "posixGroup"]
                    .iter()
                    .find(|k| classes.iter().any(|c| c.eq_ignore_ascii_case(k)))
                    .copied()
                    .unwrap_or("group");
                DirEntry {
                    dn: e.dn.clone(),
                    name: first(e, "cn")
                        .or_else(|| escape::first_rdn_value(&e.dn))
                        .unwrap_or_default(),
                    class: class.to_owned(),
                }
            })
            .collect();
        Ok(OpResult::Entries { items, next_cursor })
    }

    async fn search_users(
        &self,
        base: Option<String>,
        filter: Option<String>,
        page_size: u32,
        cursor: Option<String>,
    ) -> OpRes<OpResult> {
        let (entries, next_cursor) = match cursor {
            Some(id) => self.next_page(CursorKind::Users, &id).await?,
            None => {
                let base = self.base(base)?;
                let full = match filter.as_deref().map(str::trim) {
                    Some(f) if !f.is_empty() => {
                        escape::check_filter(f).map_err(|m| {
                            err(OpErrorCode::InvalidRequest, format!("filter {f:?}: {m}"))
                        })?;
                        format!("(&{}{f})", self.user_class_filter())
                    }
                    _ => self.user_class_filter().to_owned(),
                };
                self.first_page(CursorKind::Users, base, full, page_size)
                    .await?
            }
        };
        // Transitive groups for the whole page: direct groups from `memberOf`, then the
        // parents of each distinct group (batched reads, cached between pages).
        let direct: Vec<Vec<String>> = entries
            .iter()
            .map(|e| all(e, &self.inner.attrs.groups))
            .collect();
        let closure = self.group_closure(direct.iter().flatten()).await?;
        let now = unix_now();
        let items = entries
            .iter()
            .zip(direct)
            .filter_map(|(e, d)| {
                let groups = transitive(&d, &closure, self.inner.cfg.max_group_depth);
                self.to_user(e, groups, vec![], now)
            })
            .collect();
        Ok(OpResult::Users { items, next_cursor })
    }

    fn cursor_attrs(&self, kind: CursorKind) -> Vec<String> {
        match kind {
            CursorKind::Groups => vec!["cn".into(), "objectClass".into()],
            CursorKind::Users => self.user_attrs(),
        }
    }

    async fn first_page(
        &self,
        kind: CursorKind,
        base: String,
        filter: String,
        page_size: u32,
    ) -> OpRes<(Vec<SearchEntry>, Option<String>)> {
        let page_size = if page_size == 0 {
            self.inner.cfg.page_size
        } else {
            page_size.min(1000)
        };
        let mut c = self.inner.acquire().await?;
        let attrs = self.cursor_attrs(kind);
        let (entries, cookie) = search_page(
            c.ldap(),
            self.inner.timeout,
            &base,
            &filter,
            &attrs,
            page_size,
            Vec::new(),
        )
        .await?;
        if cookie.is_empty() {
            c.release();
            return Ok((entries, None));
        }
        let conn = c.detach();
        let ahead = ReadAhead::start(
            conn,
            self.inner.timeout,
            base.clone(),
            filter.clone(),
            attrs,
            page_size,
            cookie,
        );
        let id = self.inner.store_cursor(Cursor {
            kind,
            ahead,
            base,
            filter,
            page_size,
            last_used: Instant::now(),
        });
        Ok((entries, Some(id)))
    }

    async fn next_page(
        &self,
        kind: CursorKind,
        id: &str,
    ) -> OpRes<(Vec<SearchEntry>, Option<String>)> {
        let expired = || {
            err(
                OpErrorCode::CursorExpired,
                "paging cursor expired or unknown; start the listing again",
            )
        };
        let mut cur = {
            let mut map = self.inner.cursors.lock().expect("lock");
            match map.remove(id) {
                Some(c) if c.kind == kind && c.last_used.elapsed() < CURSOR_IDLE => c,
                Some(c) if c.kind != kind => {
                    map.insert(id.to_owned(), c);
                    return Err(expired());
                }
                _ => return Err(expired()),
            }
        };
        let ahead = std::mem::replace(&mut cur.ahead, ReadAhead(None));
        let Some((conn, fetched)) = ahead.join().await else {
            return Err(err(
                OpErrorCode::Internal,
                "fetching the next page stopped unexpectedly; start the listing again",
            ));
        };
        let (entries, cookie) = fetched?;
        if cookie.is_empty() {
            self.inner.give_back(conn);
            return Ok((entries, None));
        }
        cur.ahead = ReadAhead::start(
            conn,
            self.inner.timeout,
            cur.base.clone(),
            cur.filter.clone(),
            self.cursor_attrs(kind),
            cur.page_size,
            cookie,
        );
        cur.last_used = Instant::now();
        // the same id again: the caller may hold on to one id for the whole listing
        self.inner
            .cursors
            .lock()
            .expect("lock")
            .insert(id.to_owned(), cur);
        Ok((entries, Some(id.to_owned())))
    }

    // ---- groups ---------------------------------------------------------------------------

    /// Parent groups of every group reachable from `start`, by batched reads of the groups'
    /// `memberOf` (AD and the OpenLDAP memberof overlay both set it on groups).
    async fn group_closure<'a>(
        &self,
        start: impl Iterator<Item = &'a String>,
    ) -> OpRes<HashMap<String, Vec<String>>> {
        let mut known: HashMap<String, Vec<String>> = HashMap::new();
        let mut frontier: Vec<String> = start.cloned().collect();
        let mut seen: HashSet<String> = HashSet::new();
        let mut shared: Option<Shared> = None;
        let r = async {
            for _ in 0..self.inner.cfg.max_group_depth {
                let mut todo = Vec::new();
                for g in frontier.drain(..) {
                    let key = g.to_lowercase();
                    if !seen.insert(key.clone()) {
                        continue;
                    }
                    let cached = self
                        .inner
                        .group_parents
                        .lock()
                        .expect("lock")
                        .get(&key)
                        .filter(|(t, _)| t.elapsed() < GROUP_CACHE_TTL)
                        .map(|(_, p)| p.clone());
                    match cached {
                        Some(p) => {
                            known.insert(key, p);
                        }
                        None => todo.push(g),
                    }
                }
                for chunk in todo.chunks(50) {
                    if shared.is_none() {
                        shared = Some(self.inner.shared().await?);
                    }
                    let c = shared.as_mut().expect("connection");
                    let dn_attr = match self.inner.cfg.kind {
                        DirectoryKind::Ad => "distinguishedName",
                        DirectoryKind::Openldap => "entryDN",
                    };
                    let ors: String = chunk
                        .iter()
                        .map(|g| format!("({dn_attr}={})", escape::filter_value(g)))
                        .collect();
                    let filter = format!("(&{}(|{ors}))", self.group_class_filter());
                    let groups_attr = self.inner.attrs.groups.clone();
                    let entries = self
                        .inner
                        .search_all_shared(
                            c.ldap(),
                            &self.inner.cfg.base_dn,
                            Scope::Subtree,
                            &filter,
                            &[groups_attr.as_str()],
                        )
                        .await?;
                    let mut cache = self.inner.group_parents.lock().expect("lock");
                    for g in chunk {
                        let parents = entries
                            .iter()
                            .find(|e| escape::dn_within(&e.dn, g) && escape::dn_within(g, &e.dn))
                            .map(|e| all(e, &groups_attr))
                            .unwrap_or_default();
                        let key = g.to_lowercase();
                        cache.insert(key.clone(), (Instant::now(), parents.clone()));
                        known.insert(key, parents);
                    }
                }
                frontier = known
                    .values()
                    .flatten()
                    .filter(|p| !seen.contains(&p.to_lowercase()))
                    .cloned()
                    .collect();
                if frontier.is_empty() {
                    break;
                }
            }
            Ok(())
        }
        .await;
        match shared {
            Some(c) => c.settle(r),
            None => r,
        }?;
        Ok(known)
    }

    /// One user's groups, transitively. AD: one in-chain query. OpenLDAP: breadth-first over
    /// `member`/`uniqueMember` (plus posix `memberUid` for the user itself), one query per
    /// level, with a visited set (cycles) and `max_group_depth`.
    async fn user_groups(
        &self,
        ldap: &mut Ldap,
        dn: &str,
        login: Option<&str>,
    ) -> OpRes<Vec<String>> {
        let base = &self.inner.cfg.base_dn;
        if self.inner.cfg.kind == DirectoryKind::Ad {
            let f = format!(
                "(&(objectClass=group)(member:{IN_CHAIN}:={}))",
                escape::filter_value(dn)
            );
            let entries = self
                .inner
                .search_all_shared(ldap, base, Scope::Subtree, &f, &["1.1"])
                .await?;
            return Ok(entries.into_iter().map(|e| e.dn).collect());
        }
        let esc = escape::filter_value(dn);
        let posix = login
            .map(|l| format!("(memberUid={})", escape::filter_value(l)))
            .unwrap_or_default();
        let filter = format!(
            "(&{}(|(member={esc})(uniqueMember={esc}){posix}))",
            self.group_class_filter()
        );
        // Level 1 is the user's own membership and always read fresh; the levels above are
        // group-to-group edges, the same for every member, so they come from `nested_parents`
        // (one query per group not seen within `GROUP_CACHE_TTL`).
        let entries = self
            .inner
            .search_all_shared(ldap, base, Scope::Subtree, &filter, &["1.1"])
            .await?;
        let mut visited: HashSet<String> = HashSet::new();
        let mut fresh: Vec<String> = entries
            .into_iter()
            .map(|e| e.dn)
            .filter(|d| visited.insert(d.to_lowercase()))
            .collect();
        let mut out = Vec::new();
        for level in 1..=self.inner.cfg.max_group_depth {
            if fresh.is_empty() {
                break;
            }
            out.extend(fresh.iter().cloned());
            if level == self.inner.cfg.max_group_depth {
                break;
            }
            let mut next = Vec::new();
            for g in &fresh {
                for p in self.nested_parents(ldap, g).await? {
                    if visited.insert(p.to_lowercase()) {
                        next.push(p);
                    }
                }
            }
            fresh = next;
        }
        Ok(out)
    }

    /// The groups (`groupOfNames` / `groupOfUniqueNames`) that name group `dn` as a member,
    /// cached for `GROUP_CACHE_TTL`.
    async fn nested_parents(&self, ldap: &mut Ldap, dn: &str) -> OpRes<Vec<String>> {
        let key = dn.to_lowercase();
        let cached = self
            .inner
            .nested_parents
            .lock()
            .expect("lock")
            .get(&key)
            .filter(|(t, _)| t.elapsed() < GROUP_CACHE_TTL)
            .map(|(_, p)| p.clone());
        if let Some(p) = cached {
            return Ok(p);
        }
        let e = escape::filter_value(dn);
        let filter = format!(
            "(&(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames))(|(member={e})(uniqueMember={e})))"
        );
        let parents: Vec<String> = self
            .inner
            .search_all_shared(
                ldap,
                &self.inner.cfg.base_dn,
                Scope::Subtree,
                &filter,
                &["1.1"],
            )
            .await?
            .into_iter()
            .map(|e| e.dn)
            .collect();
        self.inner
            .nested_parents
            .lock()
            .expect("lock")
            .insert(key, (Instant::now(), parents.clone()));
        Ok(parents)
    }

    // ---- users ----------------------------------------------------------------------------

    fn user_attrs(&self) -> Vec<String> {
        let a = &self.inner.attrs;
        let mut v = vec![
            a.id.clone(),
            a.login.clone(),
            a.email.clone(),
            a.name.clone(),
            a.department.clone(),
            a.country.clone(),
            a.groups.clone(),
            "displayName".into(),
        ];
        v.extend(a.upn.clone());
        v.extend(a.enabled.clone());
        if self.inner.cfg.kind == DirectoryKind::Ad {
            v.push("accountExpires".into());
        }
        v
    }

    fn to_user(
        &self,
        e: &SearchEntry,
        groups: Vec<String>,
        matched_filters: Vec<usize>,
        now: i64,
    ) -> Option<DirUser> {
        let a = &self.inner.attrs;
        let id = match first_bytes(e, &a.id) {
            Some(b) if b.len() == 16 => escape::guid_from_bytes(&b)?.to_string(),
            Some(b) => {
                let s = String::from_utf8(b).ok()?;
                uuid::Uuid::parse_str(s.trim())
                    .map(|u| u.to_string())
                    .unwrap_or(s)
            }
            None => {
                tracing::warn!(dn = %e.dn, attr = %a.id, "directory user without an id; skipped");
                return None;
            }
        };
        let enabled = match &a.enabled {
            None => true,
            Some(attr) if attr.eq_ignore_ascii_case("userAccountControl") => {
                let uac_ok = first(e, attr)
                    .and_then(|v| v.trim().parse::<i64>().ok())
                    .is_none_or(|v| v & 0x2 == 0);
                let expired =
                    first(e, "accountExpires").is_some_and(|v| escape::account_expired(&v, now));
                uac_ok && !expired
            }
            Some(attr) => first(e, attr).is_none_or(|v| {
                !matches!(
                    v.trim().to_ascii_lowercase().as_str(),
                    "false" | "0" | "no" | "disabled"
                )
            }),
        };
        Some(DirUser {
            id,
            dn: e.dn.clone(),
            login: first(e, &a.login),
            upn: a.upn.as_ref().and_then(|u| first(e, u)),
            email: first(e, &a.email),
            name: first(e, &a.name).or_else(|| first(e, "displayName")),
            department: first(e, &a.department),
            country: first(e, &a.country),
            groups,
            enabled,
            matched_filters,
        })
    }

    async fn domain_ok(&self, domain: &str) -> OpRes<bool> {
        let extra = &self.inner.cfg.domains;
        if extra.iter().any(|d| d.eq_ignore_ascii_case(domain)) {
            return Ok(true);
        }
        match self.inner.cfg.kind {
            DirectoryKind::Openldap => Ok(extra.is_empty()),
            DirectoryKind::Ad => {
                let names = self.domain_names().await?;
                Ok([names.netbios, names.dns]
                    .iter()
                    .flatten()
                    .any(|n| n.eq_ignore_ascii_case(domain)))
            }
        }
    }

    fn user_filter(&self, attr: &str, value: &str) -> String {
        format!(
            "(&{}({attr}={}))",
            self.user_class_filter(),
            escape::filter_value(value)
        )
    }

    /// The search a `LookupUser` by login starts with: (base DN, filter, attributes). Public so
    /// that `imd bench directory` can make exactly this search straight against the directory.
    pub fn login_search(&self, login: &str) -> (String, String, Vec<String>) {
        (
            self.inner.cfg.base_dn.clone(),
            self.user_filter(&self.inner.attrs.login, login),
            self.user_attrs(),
        )
    }

    /// The search a `SearchUsers` with neither base nor filter pages through: (base DN, filter,
    /// attributes). Public so that `imd bench sync` can page through the same entries straight
    /// from the directory.
    pub fn users_search(&self) -> (String, String, Vec<String>) {
        (
            self.inner.cfg.base_dn.clone(),
            self.user_class_filter().to_owned(),
            self.user_attrs(),
        )
    }

    /// The user's entry (exactly one hit) with groups and matched filters, or `None`.
    async fn lookup_user(&self, q: &Lookup) -> OpRes<Option<DirUser>> {
        for (i, f) in q.filters.iter().enumerate() {
            escape::check_filter(f).map_err(|m| {
                err(
                    OpErrorCode::InvalidRequest,
                    format!("filters[{i}] {f:?}: {m}"),
                )
            })?;
        }
        let a = &self.inner.attrs;
        let (attr, value) = match (&q.upn, &q.login) {
            (Some(upn), _) => {
                let attr = a.upn.clone().unwrap_or_else(|| a.email.clone());
                (attr, upn.as_str())
            }
            (None, Some(login)) => (a.login.clone(), login.as_str()),
            (None, None) => {
                return Err(err(
                    OpErrorCode::InvalidRequest,
                    "lookup needs a login or a UPN",
                ));
            }
        };
        // Servers compare C strings: "alice\0" would match alice. No control character is part
        // of a real login or UPN.
        if value.is_empty() || value.len() > MAX_NAME_LEN || value.chars().any(char::is_control) {
            return Ok(None);
        }
        if q.upn.is_none()
            && let Some(d) = q.domain.as_deref().filter(|d| !d.is_empty())
            && !self.domain_ok(d).await?
        {
            return Ok(None);
        }
        let filter = self.user_filter(&attr, value);
        let mut c = self.inner.shared().await?;
        let r = self.lookup_on(c.ldap(), q, &attr, value, &filter).await;
        c.settle(r)
    }

    /// `lookup_user`'s searches, on one shared connection.
    async fn lookup_on(
        &self,
        ldap: &mut Ldap,
        q: &Lookup,
        attr: &str,
        value: &str,
        filter: &str,
    ) -> OpRes<Option<DirUser>> {
        let a = &self.inner.attrs;
        let to = self.inner.timeout;
        let attrs = self.user_attrs();
        let res = ldap
            .with_timeout(to)
            .with_search_options(SearchOptions::new().sizelimit(2))
            .search(&self.inner.cfg.base_dn, Scope::Subtree, filter, attrs)
            .await
            .map_err(map_ldap_err)?;
        let SearchResult(raw, res) = res;
        if raw.len() > 1 {
            return Err(err(
                OpErrorCode::InvalidRequest,
                format!("ambiguous: more than one user has {attr}={value:?}"),
            ));
        }
        if res.rc != 0 {
            return Err(map_rc(&res, &self.inner.cfg.base_dn));
        }
        let Some(entry) = raw.into_iter().next().map(SearchEntry::construct) else {
            return Ok(None);
        };
        let login = first(&entry, &a.login);
        let groups = self.user_groups(ldap, &entry.dn, login.as_deref()).await?;
        let mut matched = Vec::new();
        for (i, f) in q.filters.iter().enumerate() {
            let res = ldap
                .with_timeout(to)
                .search(
                    &entry.dn,
                    Scope::Base,
                    &format!("(&(objectClass=*){})", f.trim()),
                    vec!["1.1"],
                )
                .await
                .map_err(map_ldap_err)?;
            match res.1.rc {
                0 => {
                    if !res.0.is_empty() {
                        matched.push(i);
                    }
                }
                _ => {
                    return Err(err(
                        OpErrorCode::InvalidRequest,
                        format!("filters[{i}] {f:?}: the directory refused it: {}", res.1),
                    ));
                }
            }
        }
        Ok(self.to_user(&entry, groups, matched, unix_now()))
    }

    /// Look the user up with the service account, then bind as it on a fresh connection.
    async fn verify_password(&self, q: &Lookup, password: &str) -> OpRes<PasswordCheck> {
        // An empty password is an anonymous bind that AD reports as success (RFC 4513 §5.1.2):
        // refuse it before any network I/O.
        if password.is_empty() {
            return Ok(PasswordCheck {
                verdict: PasswordVerdict::Invalid,
                user: None,
            });
        }
        let Some(user) = self.lookup_user(q).await? else {
            return Ok(PasswordCheck {
                verdict: PasswordVerdict::Invalid,
                user: None,
            });
        };
        let mut conn = self.inner.connect(None).await?;
        let res = conn
            .ldap
            .with_timeout(self.inner.timeout)
            .simple_bind(&user.dn, password)
            .await
            .map_err(map_ldap_err);
        // never reused: the connection now carries the user's identity
        let _ = conn.ldap.unbind().await;
        let res = res?;
        if res.rc == 0 {
            let verdict = if user.enabled {
                PasswordVerdict::Valid
            } else {
                PasswordVerdict::Disabled
            };
            return Ok(PasswordCheck {
                verdict,
                user: Some(user),
            });
        }
        if res.rc == 8 || res.rc == 13 {
            return Err(err(
                OpErrorCode::DirectoryUnavailable,
                "the directory requires an encrypted connection for binds (use ldaps:// or starttls)",
            ));
        }
        match escape::bind_verdict(res.rc, &res.text) {
            Some(verdict) => Ok(PasswordCheck {
                user: (verdict == PasswordVerdict::Disabled).then_some(user),
                verdict,
            }),
            // e.g. OpenLDAP rc 53 for a policy refusal: not a valid login
            None if res.rc == 53 || res.rc == 50 || res.rc == 48 => Ok(PasswordCheck {
                verdict: PasswordVerdict::Invalid,
                user: None,
            }),
            None => Err(err(
                OpErrorCode::DirectoryUnavailable,
                format!("user bind failed: rc={} {}", res.rc, res.text),
            )),
        }
    }
}

// ---- pool -----------------------------------------------------------------------------------

impl Inner {
    /// A handle on a shared connection: the least-loaded one below `MAX_IN_FLIGHT`; a new one
    /// (up to `pool_size`) when every connection is busy; else waits for a free slot, up to
    /// the operation timeout (then `busy`, as the exclusive pool answers). A failed connect is
    /// this operation's error only when no shared connection is open.
    async fn shared(self: &Arc<Self>) -> OpRes<Shared> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        // false after a failed connect while others are open: use (or wait for) those instead
        let mut may_connect = true;
        loop {
            let freed = self.shared_freed.notified();
            tokio::pin!(freed);
            // registered before the state is read, so a slot freed in between is not missed
            freed.as_mut().enable();
            let can_connect = {
                let mut set = self.shared.lock().expect("lock");
                set.conns.retain_mut(|c| !c.ldap.is_closed());
                let room = may_connect && set.conns.len() + set.connecting < self.cfg.pool_size;
                let best = set
                    .conns
                    .iter_mut()
                    .filter(|c| c.in_flight < MAX_IN_FLIGHT)
                    .min_by_key(|c| c.in_flight);
                match best {
                    Some(c) if c.in_flight == 0 || !room => {
                        c.in_flight += 1;
                        c.last_used = Instant::now();
                        return Ok(Shared {
                            ldap: c.ldap.clone(),
                            url: c.url.clone(),
                            id: c.id,
                            inner: self.clone(),
                            settled: false,
                        });
                    }
                    _ if room => {
                        set.connecting += 1;
                        true
                    }
                    _ => false,
                }
            };
            if can_connect {
                let _place = Connecting(self);
                let conn = match self.connect(Some(())).await {
                    Ok(c) => c,
                    Err(e) => {
                        if self.shared.lock().expect("lock").conns.is_empty() {
                            return Err(e);
                        }
                        may_connect = false;
                        continue;
                    }
                };
                let mut set = self.shared.lock().expect("lock");
                let id = set.next_id;
                set.next_id += 1;
                set.conns.push(SharedConn {
                    id,
                    ldap: conn.ldap.clone(),
                    url: conn.url.clone(),
                    in_flight: 1,
                    last_used: Instant::now(),
                });
                return Ok(Shared {
                    ldap: conn.ldap,
                    url: conn.url,
                    id,
                    inner: self.clone(),
                    settled: false,
                });
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(err(OpErrorCode::Busy, "all directory connections are busy"));
            }
        }
    }

    /// An operation on shared connection `id` ended; `retire` takes the connection out of the
    /// set (operations still running on it finish on their clones).
    fn shared_done(&self, id: u64, retire: bool) {
        {
            let mut set = self.shared.lock().expect("lock");
            if let Some(i) = set.conns.iter().position(|c| c.id == id) {
                if retire {
                    set.conns.swap_remove(i);
                } else {
                    let c = &mut set.conns[i];
                    c.in_flight -= 1;
                    c.last_used = Instant::now();
                }
            }
        }
        self.shared_freed.notify_waiters();
    }

    /// `search_all` on a shared connection: the first page there, which is all of it for the
    /// searches the connector multiplexes (a user's groups, a batch of 50 groups, one level of
    /// OUs); a result set that needs more pages is abandoned there and read again, paged, on an
    /// exclusive connection, because paging must not continue on a shared connection.
    async fn search_all_shared(
        self: &Arc<Self>,
        ldap: &mut Ldap,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: &[&str],
    ) -> OpRes<Vec<SearchEntry>> {
        self.search_all_shared_paged(ldap, ALL_PAGE, base, scope, filter, attrs)
            .await
    }

    async fn search_all_shared_paged(
        self: &Arc<Self>,
        ldap: &mut Ldap,
        page: i32,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: &[&str],
    ) -> OpRes<Vec<SearchEntry>> {
        let to = self.timeout;
        let res = ldap
            .with_timeout(to)
            .with_controls(PagedResults {
                size: page,
                cookie: Vec::new(),
            })
            .search(base, scope, filter, attrs.to_vec())
            .await
            .map_err(map_ldap_err)?;
        let (entries, r) = check_result(res, base)?;
        let cookie = paged_cookie(&r.ctrls);
        if cookie.is_empty() {
            return Ok(entries);
        }
        // best effort: the server may already have dropped the state for another paged search
        let _ = ldap
            .with_timeout(to)
            .with_controls(PagedResults { size: 0, cookie })
            .search(base, scope, filter, attrs.to_vec())
            .await;
        let mut c = self.acquire().await?;
        let out = search_all(c.ldap(), to, page, base, scope, filter, attrs).await?;
        c.release();
        Ok(out)
    }

    /// Shared connections open (for tests and the bench).
    fn shared_count(&self) -> usize {
        self.shared.lock().expect("lock").conns.len()
    }

    async fn acquire(self: &Arc<Self>) -> OpRes<Pooled> {
        let permit = tokio::time::timeout(self.timeout, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| err(OpErrorCode::Busy, "all directory connections are busy"))?
            .map_err(|_| err(OpErrorCode::Internal, "connection pool closed"))?;
        let reuse = {
            let mut idle = self.idle.lock().expect("lock");
            let max_idle = Duration::from_secs(self.cfg.idle_secs);
            let mut found = None;
            while let Some(mut c) = idle.pop() {
                if c.last_used.elapsed() < max_idle && !c.ldap.is_closed() {
                    found = Some(c);
                    break;
                }
            }
            found
        };
        let conn = match reuse {
            Some(c) => c,
            None => self.connect(Some(())).await?,
        };
        Ok(Pooled {
            conn: Some(conn),
            _permit: permit,
            inner: self.clone(),
        })
    }

    fn give_back(&self, mut c: Conn) {
        c.last_used = Instant::now();
        let mut idle = self.idle.lock().expect("lock");
        if idle.len() < self.cfg.pool_size && !c.ldap.is_closed() {
            idle.push(c);
        }
    }

    fn store_cursor(&self, cur: Cursor) -> String {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let mut map = self.cursors.lock().expect("lock");
        if map.len() >= MAX_CURSORS
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, c)| c.last_used)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(id.clone(), cur);
        id
    }

    /// URL order: the one that answered last first, then the others in configured order;
    /// after `PREFER_RESET` the configured order again (a DC that came back is preferred).
    fn url_order(&self) -> Vec<usize> {
        let n = self.cfg.urls.len();
        let mut p = self.preferred.lock().expect("lock");
        if p.0 != 0 && p.1.elapsed() > PREFER_RESET {
            *p = (0, Instant::now());
        }
        let first = p.0.min(n - 1);
        std::iter::once(first)
            .chain((0..n).filter(|i| *i != first))
            .collect()
    }

    /// A new connection, bound as the service account when `service_bind` is `Some`.
    async fn connect(&self, service_bind: Option<()>) -> OpRes<Conn> {
        let mut failures = Vec::new();
        for i in self.url_order() {
            let url = &self.cfg.urls[i];
            match self.connect_url(url).await {
                Ok(mut ldap) => {
                    if service_bind.is_some() {
                        let res = ldap
                            .with_timeout(self.timeout)
                            .simple_bind(&self.cfg.bind_dn, self.cfg.bind_password())
                            .await;
                        match res {
                            Ok(r) if r.rc == 0 => {}
                            Ok(r) => {
                                let _ = ldap.unbind().await;
                                return Err(err(
                                    OpErrorCode::DirectoryUnavailable,
                                    format!(
                                        "service account bind as {:?} at {url} failed: rc={} {}",
                                        self.cfg.bind_dn, r.rc, r.text
                                    ),
                                ));
                            }
                            Err(e) => {
                                failures.push(format!("{url}: bind: {e}"));
                                continue;
                            }
                        }
                    }
                    *self.preferred.lock().expect("lock") = (i, Instant::now());
                    *self.last_url.lock().expect("lock") = Some(url.clone());
                    return Ok(Conn {
                        ldap,
                        url: url.clone(),
                        last_used: Instant::now(),
                    });
                }
                Err(e) => {
                    tracing::warn!(%url, error = %e, "directory URL did not answer; trying the next");
                    failures.push(format!("{url}: {e}"));
                }
            }
        }
        Err(err(
            OpErrorCode::DirectoryUnavailable,
            format!("no directory URL answered: {}", failures.join("; ")),
        ))
    }

    async fn connect_url(&self, url: &str) -> Result<Ldap, String> {
        let plain = url.to_ascii_lowercase().starts_with("ldap://");
        let mut settings = LdapConnSettings::new()
            .set_conn_timeout(self.timeout)
            .set_starttls(plain && self.cfg.starttls);
        if let Some(tls) = &self.tls {
            settings = settings.set_config(tls.clone());
        }
        let fut = LdapConnAsync::with_settings(settings, url);
        let (conn, ldap) = tokio::time::timeout(self.timeout + Duration::from_secs(1), fut)
            .await
            .map_err(|_| "connection timed out".to_string())?
            .map_err(describe_connect_error)?;
        tokio::spawn(async move {
            if let Err(e) = conn.drive().await {
                tracing::debug!(error = %e, "directory connection ended");
            }
        });
        Ok(ldap)
    }

    fn sweep(&self) {
        let max_idle = Duration::from_secs(self.cfg.idle_secs);
        self.idle
            .lock()
            .expect("lock")
            .retain_mut(|c| c.last_used.elapsed() < max_idle && !c.ldap.is_closed());
        self.shared.lock().expect("lock").conns.retain_mut(|c| {
            (c.in_flight > 0 || c.last_used.elapsed() < max_idle) && !c.ldap.is_closed()
        });
        self.cursors
            .lock()
            .expect("lock")
            .retain(|_, c| c.last_used.elapsed() < CURSOR_IDLE);
        self.group_parents
            .lock()
            .expect("lock")
            .retain(|_, (t, _)| t.elapsed() < GROUP_CACHE_TTL);
        self.nested_parents
            .lock()
            .expect("lock")
            .retain(|_, (t, _)| t.elapsed() < GROUP_CACHE_TTL);
    }
}

/// Closes idle connections and expired cursors (dropping the last `Ldap` handle ends the
/// connection's driver task); stops with the `Directory`.
async fn reaper(inner: Weak<Inner>) {
    let period = match inner.upgrade() {
        Some(i) => Duration::from_secs((i.cfg.idle_secs / 2).clamp(1, 30)),
        None => return,
    };
    loop {
        tokio::time::sleep(period).await;
        match inner.upgrade() {
            Some(i) => i.sweep(),
            None => return,
        }
    }
}

fn describe_connect_error(e: LdapError) -> String {
    let s = e.to_string();
    if s.contains("UnknownIssuer") || s.contains("invalid peer certificate") {
        format!("TLS certificate not trusted (check directory.ca_file): {s}")
    } else {
        s
    }
}

fn tls_config(ca: &Path) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .map_err(|e| format!("directory.ca_file {}: {e}", ca.display()))?;
    for c in certs {
        let c = c.map_err(|e| format!("directory.ca_file {}: {e}", ca.display()))?;
        roots
            .add(c)
            .map_err(|e| format!("directory.ca_file {}: {e}", ca.display()))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "directory.ca_file {}: no certificates found",
            ca.display()
        ));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

// ---- search helpers -------------------------------------------------------------------------

fn map_ldap_err(e: LdapError) -> OpError {
    match e {
        LdapError::Timeout { .. } => {
            err(OpErrorCode::Timeout, "the directory did not answer in time")
        }
        LdapError::FilterParsing => err(OpErrorCode::InvalidRequest, "invalid LDAP filter"),
        e => err(
            OpErrorCode::DirectoryUnavailable,
            format!("directory connection failed: {e}"),
        ),
    }
}

fn map_rc(res: &LdapResult, base: &str) -> OpError {
    match res.rc {
        32 => err(
            OpErrorCode::NotFound,
            format!("base DN {base:?} does not exist in the directory"),
        ),
        10 => err(
            OpErrorCode::NotFound,
            format!("base DN {base:?} is not held by this directory (referral)"),
        ),
        34 => err(
            OpErrorCode::InvalidRequest,
            format!("invalid DN syntax: {base:?}"),
        ),
        3 => err(OpErrorCode::Timeout, format!("directory time limit: {res}")),
        4 | 11 => err(
            OpErrorCode::TooLarge,
            format!("directory size limit exceeded: {res}"),
        ),
        2 | 17 | 18 | 21 | 53 => err(
            OpErrorCode::InvalidRequest,
            format!("the directory refused the request: {res}"),
        ),
        50..=52 => err(
            OpErrorCode::DirectoryUnavailable,
            format!("the directory refused the service account: {res}"),
        ),
        _ => err(OpErrorCode::Internal, format!("directory error: {res}")),
    }
}

fn check_result(res: SearchResult, base: &str) -> OpRes<(Vec<SearchEntry>, LdapResult)> {
    let SearchResult(entries, r) = res;
    if r.rc != 0 {
        return Err(map_rc(&r, base));
    }
    Ok((entries.into_iter().map(SearchEntry::construct).collect(), r))
}

/// The cookie of a paged-results response control; empty at the end of the set (or without
/// the control).
pub(crate) fn paged_cookie(ctrls: &[Control]) -> Vec<u8> {
    ctrls
        .iter()
        .find_map(|c| match c {
            Control(Some(ControlType::PagedResults), raw) => {
                Some(raw.parse::<PagedResults>().cookie)
            }
            _ => None,
        })
        .unwrap_or_default()
}

/// One page of a paged subtree search; an empty returned cookie ends the set.
async fn search_page(
    ldap: &mut Ldap,
    to: Duration,
    base: &str,
    filter: &str,
    attrs: &[String],
    size: u32,
    cookie: Vec<u8>,
) -> OpRes<(Vec<SearchEntry>, Vec<u8>)> {
    let res = ldap
        .with_timeout(to)
        .with_controls(PagedResults {
            size: size as i32,
            cookie,
        })
        .search(base, Scope::Subtree, filter, attrs.to_vec())
        .await
        .map_err(map_ldap_err)?;
    let (entries, r) = check_result(res, base)?;
    Ok((entries, paged_cookie(&r.ctrls)))
}

/// All entries, paging internally (`page` per page, `ALL_PAGE` = 500) so server size limits do not cut it short.
async fn search_all(
    ldap: &mut Ldap,
    to: Duration,
    page: i32,
    base: &str,
    scope: Scope,
    filter: &str,
    attrs: &[&str],
) -> OpRes<Vec<SearchEntry>> {
    let mut out = Vec::new();
    let mut cookie = Vec::new();
    loop {
        let res = ldap
            .with_timeout(to)
            .with_controls(PagedResults { size: page, cookie })
            .search(base, scope, filter, attrs.to_vec())
            .await
            .map_err(map_ldap_err)?;
        let (entries, r) = check_result(res, base)?;
        out.extend(entries);
        cookie = paged_cookie(&r.ctrls);
        if cookie.is_empty() {
            return Ok(out);
        }
        if out.len() > MAX_LIST {
            // abandon the paged set on the server (size 0 with the last cookie)
            let _ = ldap
                .with_timeout(to)
                .with_controls(PagedResults { size: 0, cookie })
                .search(base, scope, filter, attrs.to_vec())
                .await;
            return Err(err(
                OpErrorCode::TooLarge,
                format!("more than {MAX_LIST} entries under {base:?}"),
            ));
        }
    }
}

async fn read_domain_names(
    ldap: &mut Ldap,
    to: Duration,
    config_nc: &str,
    default_nc: &str,
) -> OpRes<DomainNames> {
    let base = format!("CN=Partitions,{config_nc}");
    let filter = format!(
        "(&(objectClass=crossRef)(nCName={}))",
        escape::filter_value(default_nc)
    );
    let res = ldap
        .with_timeout(to)
        .search(
            &base,
            Scope::OneLevel,
            &filter,
            vec!["nETBIOSName", "dnsRoot"],
        )
        .await
        .map_err(map_ldap_err)?;
    let (entries, _) = match check_result(res, &base) {
        Ok(r) => r,
        // no crossRef readable: names unknown, not an error
        Err(_) => return Ok(DomainNames::default()),
    };
    Ok(entries
        .first()
        .map(|e| DomainNames {
            netbios: first(e, "nETBIOSName"),
            dns: first(e, "dnsRoot"),
        })
        .unwrap_or_default())
}

fn find_key<'a, V>(map: &'a HashMap<String, V>, name: &str) -> Option<&'a V> {
    map.get(name).or_else(|| {
        map.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })
}

fn first(e: &SearchEntry, name: &str) -> Option<String> {
    find_key(&e.attrs, name).and_then(|v| v.first().cloned())
}

fn all(e: &SearchEntry, name: &str) -> Vec<String> {
    find_key(&e.attrs, name).cloned().unwrap_or_default()
}

/// `ldap3` puts a value in `bin_attrs` only when it is not UTF-8: check both maps.
fn first_bytes(e: &SearchEntry, name: &str) -> Option<Vec<u8>> {
    find_key(&e.bin_attrs, name)
        .and_then(|v| v.first().cloned())
        .or_else(|| first(e, name).map(String::into_bytes))
}

/// Direct groups plus every ancestor in `parents`, breadth-first, without repeats.
fn transitive(
    direct: &[String],
    parents: &HashMap<String, Vec<String>>,
    max_depth: usize,
) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut q: VecDeque<(String, usize)> = direct.iter().map(|g| (g.clone(), 1)).collect();
    while let Some((g, depth)) = q.pop_front() {
        let key = g.to_lowercase();
        if !seen.insert(key.clone()) {
            continue;
        }
        out.push(g);
        if depth < max_depth {
            for p in parents.get(&key).into_iter().flatten() {
                q.push_back((p.clone(), depth + 1));
            }
        }
    }
    out
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

// ---- imd connector check --------------------------------------------------------------------

/// `imd connector check`: bind with the configured account, read the root DSE and the first
/// page of users under `base_dn`, and describe what was found.
pub async fn check(config: &ConnectorConfig) -> Result<String, OpError> {
    use std::fmt::Write as _;
    let dir = Directory::new(config)?;
    let dse = dir.root_dse().await?;
    let mut r = String::new();
    let d = &config.directory;
    let _ = writeln!(r, "directory kind:      {}", d.kind.as_str());
    let _ = writeln!(
        r,
        "URL used:            {}",
        dir.last_url().unwrap_or_default()
    );
    let _ = writeln!(r, "bind DN:             {} (bind ok)", d.bind_dn);
    let _ = writeln!(r, "server:              {}", dse.server);
    if let Some(v) = &dse.vendor {
        let _ = writeln!(r, "vendor:              {v}");
    }
    let _ = writeln!(r, "naming contexts:     {}", dse.naming_contexts.join("; "));
    let _ = writeln!(
        r,
        "default NC:          {}",
        dse.default_naming_context.as_deref().unwrap_or("(none)")
    );
    let _ = writeln!(
        r,
        "server time:         {}",
        dse.server_time.as_deref().unwrap_or("(not reported)")
    );
    let _ = writeln!(
        r,
        "paged results:       {}",
        if dse.supports_paging {
            "supported"
        } else {
            "NOT supported (listings above the server's size limit will fail)"
        }
    );
    if d.kind == DirectoryKind::Ad {
        let _ = writeln!(
            r,
            "domain:              NetBIOS {} / DNS {}",
            dse.netbios_domain.as_deref().unwrap_or("?"),
            dse.dns_domain.as_deref().unwrap_or("?")
        );
    }
    let _ = writeln!(r, "base DN:             {}", d.base_dn);
    let page = dir
        .execute(Operation::SearchUsers {
            base: None,
            filter: None,
            page_size: 100,
            cursor: None,
        })
        .await?;
    if let OpResult::Users { items, next_cursor } = page {
        let more = if next_cursor.is_some() { "+" } else { "" };
        let _ = writeln!(r, "users (first page):  {}{more}", items.len());
        for u in items.iter().take(5) {
            let _ = writeln!(
                r,
                "  {} <{}> {}",
                u.login.as_deref().unwrap_or("?"),
                u.email.as_deref().unwrap_or("no email"),
                u.id
            );
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn cfg(url: &str) -> ConnectorConfig {
        ConnectorConfig::from_toml_str(&format!(
            r#"
[directory]
kind = "ad"
urls = ["{url}"]
bind_dn = "CN=r,DC=example,DC=test"
bind_password = "pw"
base_dn = "DC=example,DC=test"
timeout_secs = 2
"#
        ))
        .unwrap()
    }

    #[tokio::test]
    async fn empty_password_is_refused_without_any_connection() {
        // A listener that counts connection attempts: there must be none.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let a = accepted.clone();
        tokio::spawn(async move {
            while listener.accept().await.is_ok() {
                a.fetch_add(1, Ordering::SeqCst);
            }
        });
        let dir = Directory::new(&cfg(&format!("ldap://127.0.0.1:{port}"))).unwrap();
        let t = Instant::now();
        let r = dir
            .execute(Operation::VerifyPassword {
                login: Some("alice".into()),
                domain: None,
                upn: None,
                password: String::new(),
                filters: vec![],
            })
            .await
            .unwrap();
        match r {
            OpResult::Password(p) => {
                assert_eq!(p.verdict, PasswordVerdict::Invalid);
                assert!(p.user.is_none());
            }
            other => panic!("{other:?}"),
        }
        assert!(t.elapsed() < Duration::from_millis(500));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            0,
            "a connection was attempted"
        );
    }

    #[tokio::test]
    async fn unreachable_directory_is_unavailable_and_names_the_url() {
        let dir = Directory::new(&cfg("ldap://127.0.0.1:1")).unwrap();
        let e = dir.execute(Operation::RootDse).await.unwrap_err();
        assert_eq!(e.code, OpErrorCode::DirectoryUnavailable);
        assert!(e.message.contains("ldap://127.0.0.1:1"), "{}", e.message);
    }

    #[tokio::test]
    async fn bad_filters_and_bases_are_refused_before_io() {
        let dir = Directory::new(&cfg("ldap://127.0.0.1:1")).unwrap();
        let e = dir
            .execute(Operation::LookupUser {
                login: Some("alice".into()),
                domain: None,
                upn: None,
                filters: vec!["(ok=1)".into(), "(a=b))(|(c=*)".into()],
            })
            .await
            .unwrap_err();
        assert_eq!(e.code, OpErrorCode::InvalidRequest);
        assert!(e.message.contains("filters[1]"), "{}", e.message);
        let e = dir
            .execute(Operation::ListOus {
                base: Some("DC=other,DC=test".into()),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code, OpErrorCode::NotFound);
        let e = dir
            .execute(Operation::SearchUsers {
                base: None,
                filter: None,
                page_size: 10,
                cursor: Some("nonexistent".into()),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code, OpErrorCode::CursorExpired);
    }

    #[test]
    fn wrong_ca_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ca.pem");
        std::fs::write(&p, "not a certificate").unwrap();
        let mut c = cfg("ldaps://127.0.0.1:1");
        c.directory.ca_file = Some(p);
        let e = Directory::new(&c).err().unwrap();
        assert!(e.message.contains("ca_file"), "{}", e.message);
    }

    /// The OpenLDAP test server from `scripts/directories.sh` (TEST_OPENLDAP_*), if set.
    fn openldap(pool_size: usize) -> Option<Directory> {
        let var = |n: &str| std::env::var(n).ok().filter(|v| !v.is_empty());
        let got = (|| {
            Some(
                ConnectorConfig::from_toml_str(&format!(
                    "[directory]\nkind = \"openldap\"\nurls = [{:?}]\nbind_dn = {:?}\n\
                     bind_password = {:?}\nbase_dn = {:?}\ntimeout_secs = 5\npool_size = {pool_size}\n",
                    var("TEST_OPENLDAP_URL")?,
                    var("TEST_OPENLDAP_BIND_DN")?,
                    var("TEST_OPENLDAP_BIND_PASSWORD")?,
                    var("TEST_OPENLDAP_BASE")?,
                ))
                .unwrap(),
            )
        })();
        if got.is_none() && var("REQUIRE_DIRECTORIES").as_deref() == Some("1") {
            panic!("TEST_OPENLDAP_* unset; run: eval \"$(scripts/directories.sh start DIR)\"");
        }
        got.map(|c| Directory::new(&c).unwrap())
    }

    /// A result set of several pages is not paged on a shared connection (OpenLDAP keeps one
    /// paged state per connection): many such searches at once on 2 shared connections, beside
    /// one-page searches, each get all their entries exactly once.
    #[tokio::test]
    async fn multi_page_results_move_to_an_exclusive_connection() {
        let Some(dir) = openldap(2) else {
            eprintln!("skipping: TEST_OPENLDAP_* unset");
            return;
        };
        let inner = dir.inner.clone();
        let base = format!("ou=bulk,{}", inner.cfg.base_dn);
        let runs = (0..24).map(|i| {
            let inner = inner.clone();
            let base = base.clone();
            async move {
                let mut sh = inner.shared().await?;
                let (page, filter) = if i % 2 == 0 {
                    (100, "(objectClass=inetOrgPerson)".to_owned())
                } else {
                    (ALL_PAGE, format!("(uid=bulk{:04})", i))
                };
                let r = inner
                    .search_all_shared_paged(
                        sh.ldap(),
                        page,
                        &base,
                        Scope::OneLevel,
                        &filter,
                        &["1.1"],
                    )
                    .await;
                sh.settle(r).map(|e| (i, e))
            }
        });
        for r in futures_util::future::join_all(runs).await {
            let (i, entries) = r.unwrap();
            let dns: HashSet<String> = entries.iter().map(|e| e.dn.to_lowercase()).collect();
            let want = if i % 2 == 0 { 1200 } else { 1 };
            assert_eq!(entries.len(), want, "search {i}");
            assert_eq!(dns.len(), want, "search {i}: duplicates");
        }
        assert!(dir.shared_connections() <= 2);
    }

    #[test]
    fn transitive_groups_stop_at_cycles_and_depth() {
        let mut parents = HashMap::new();
        parents.insert("a".to_string(), vec!["B".to_string()]);
        parents.insert("b".to_string(), vec!["C".to_string(), "A".to_string()]);
        parents.insert("c".to_string(), vec!["D".to_string()]);
        let g = transitive(&["A".to_string()], &parents, 10);
        assert_eq!(g, vec!["A", "B", "C", "D"]);
        let g = transitive(&["A".to_string()], &parents, 2);
        assert_eq!(g, vec!["A", "B"]);
    }
}
