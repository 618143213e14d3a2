//! Mutable state shared between the server thread and the test's `StandIn` handle.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::tenant::{Props, Tenant, id_of};

/// Recorded requests kept (oldest dropped first), so a long benchmark run stays bounded.
pub(crate) const RECORD_CAP: usize = 200_000;

/// Locks a mutex, ignoring poisoning (a panicking handler must not wedge every later test).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One request as it reached the stand-in.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// Route name as used by `calls()` (`"token"`, `"user"`, …; `"unknown"` if none matched).
    pub route: String,
    pub method: String,
    /// Raw path as sent (still percent-encoded).
    pub path: String,
    /// Raw query string as sent (without `?`; empty if none).
    pub query: String,
    /// Header names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    /// When the request arrived, relative to the stand-in's start.
    pub at: Duration,
}

impl Recorded {
    /// First value of a header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Decoded query parameters (`+` read as space, as Graph does), names as sent.
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(self.query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    /// One decoded query parameter (name case-insensitive, e.g. `"$select"`).
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query_pairs()
            .into_iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
}

/// How an injected fault answers.
#[derive(Clone, Debug)]
pub(crate) enum Fault {
    Throttle {
        retry_after: Option<String>,
    },
    Fail {
        status: u16,
        retry_after: Option<String>,
    },
}

/// How an expired delta token is answered (§7 of the note: the sources disagree).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeltaExpiry {
    /// `400` `syncStateNotFound` (Microsoft's 2020 announcement).
    BadRequestSyncStateNotFound,
    /// `410` `syncStateNotFound`.
    GoneSyncStateNotFound,
    /// `410` with a `Location` header holding the initial query ("synchronization reset").
    GoneReset,
    /// `400` `resyncRequired`.
    ResyncRequired,
}

#[derive(Clone, Debug)]
pub(crate) struct IssuedToken {
    pub expires_at: Instant,
    pub revoked: bool,
    pub perms: Vec<String>,
}

pub(crate) struct Control {
    pub calls: HashMap<String, usize>,
    pub faults: HashMap<String, VecDeque<Fault>>,
    pub delays: HashMap<String, u64>,
    pub page_sizes: HashMap<String, usize>,
    /// Largest page per route, even when `$top` asks for more.
    pub page_caps: HashMap<String, usize>,
    pub token_lifetime: u64,
    pub tokens: HashMap<String, IssuedToken>,
    pub secret_expired: bool,
    pub perms: Vec<String>,
    /// The most recent requests (at most [`RECORD_CAP`]).
    pub recorded: VecDeque<Recorded>,
    /// Delta tokens minted at or before this directory sequence number are expired.
    pub delta_expired_upto: Option<(u64, DeltaExpiry)>,
}

impl Control {
    pub fn new() -> Control {
        Control {
            calls: HashMap::new(),
            faults: HashMap::new(),
            delays: HashMap::new(),
            page_sizes: HashMap::new(),
            page_caps: HashMap::new(),
            token_lifetime: 3599,
            tokens: HashMap::new(),
            secret_expired: false,
            perms: vec!["User.Read.All".into(), "GroupMember.Read.All".into()],
            recorded: VecDeque::new(),
            delta_expired_upto: None,
        }
    }

    /// Pops the next fault for `route` (or for `"*"`).
    pub fn take_fault(&mut self, route: &str) -> Option<Fault> {
        for key in [route, "*"] {
            if let Some(q) = self.faults.get_mut(key)
                && let Some(f) = q.pop_front()
            {
                return Some(f);
            }
        }
        None
    }

    pub fn delay(&self, route: &str) -> u64 {
        self.delays
            .get(route)
            .or_else(|| self.delays.get("*"))
            .copied()
            .unwrap_or(0)
    }
}

/// Why a user left the directory.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Removal {
    /// Soft-deleted (restorable): `@removed.reason = "changed"`.
    Soft,
    /// Permanently deleted: `"deleted"`.
    Hard,
}

pub(crate) struct UserEntry {
    pub props: Props,
    pub changed_at: u64,
    pub removed: Option<Removal>,
}

/// The tenant, indexed for look-ups, plus a change sequence for delta queries.
pub(crate) struct Directory {
    pub tenant_id: String,
    pub domains: Vec<String>,
    pub client_id: String,
    pub client_secret: String,
    pub users: Vec<UserEntry>,
    pub by_id: HashMap<String, usize>,
    pub by_upn: HashMap<String, usize>,
    pub groups: Vec<Props>,
    /// Roles follow the groups in `objects` order; `true` = directory role.
    pub group_index: HashMap<String, (usize, bool)>,
    pub roles: Vec<Props>,
    pub members: HashMap<String, Vec<String>>,
    pub parents: HashMap<String, Vec<String>>,
    pub seq: u64,
}

impl Directory {
    pub fn new(t: Tenant) -> Directory {
        let mut d = Directory {
            tenant_id: t.tenant_id.to_lowercase(),
            domains: t.domains.iter().map(|d| d.to_lowercase()).collect(),
            client_id: t.client_id,
            client_secret: t.client_secret,
            users: Vec::with_capacity(t.users.len()),
            by_id: HashMap::with_capacity(t.users.len()),
            by_upn: HashMap::with_capacity(t.users.len()),
            groups: t.groups,
            group_index: HashMap::new(),
            roles: t.roles,
            members: t.members,
            parents: HashMap::new(),
            seq: 1,
        };
        for props in t.users {
            d.index_user(d.users.len(), &props);
            d.users.push(UserEntry {
                props,
                changed_at: 1,
                removed: None,
            });
        }
        for (i, g) in d.groups.iter().enumerate() {
            d.group_index.insert(id_of(g), (i, false));
        }
        for (i, r) in d.roles.iter().enumerate() {
            d.group_index.insert(id_of(r), (i, true));
        }
        for (g, ms) in &d.members {
            for m in ms {
                d.parents.entry(m.clone()).or_default().push(g.clone());
            }
        }
        // Deterministic parent order: declaration order of the groups.
        let order: HashMap<String, usize> = d
            .groups
            .iter()
            .chain(d.roles.iter())
            .enumerate()
            .map(|(i, g)| (id_of(g), i))
            .collect();
        for ps in d.parents.values_mut() {
            ps.sort_by_key(|g| order.get(g).copied().unwrap_or(usize::MAX));
        }
        d
    }

    fn index_user(&mut self, i: usize, props: &Props) {
        self.by_id.insert(id_of(props), i);
        if let Some(upn) = props.get("userPrincipalName").and_then(Value::as_str) {
            self.by_upn.insert(upn.to_lowercase(), i);
        }
    }

    /// A live (not deleted) user by id or UPN, case-insensitive.
    pub fn find_user(&self, key: &str) -> Option<usize> {
        let k = key.to_lowercase();
        self.by_id
            .get(&k)
            .or_else(|| self.by_upn.get(&k))
            .copied()
            .filter(|&i| self.users[i].removed.is_none())
    }

    pub fn group(&self, id: &str) -> Option<(&Props, bool)> {
        self.group_index.get(&id.to_lowercase()).map(|&(i, role)| {
            if role {
                (&self.roles[i], true)
            } else {
                (&self.groups[i], false)
            }
        })
    }

    /// Every group and role `object` is a member of, directly or through nesting; breadth-first,
    /// cycles guarded. `direct_only` stops after the first level.
    pub fn member_of(&self, object: &str, direct_only: bool) -> Vec<String> {
        let mut seen: HashSet<String> = HashSet::new();
        let mut out = Vec::new();
        let mut queue: VecDeque<String> = VecDeque::new();
        queue.push_back(object.to_lowercase());
        let mut first = true;
        while let Some(cur) = queue.pop_front() {
            if !first && direct_only {
                break;
            }
            for p in self.parents.get(&cur).into_iter().flatten() {
                if seen.insert(p.clone()) {
                    out.push(p.clone());
                    queue.push_back(p.clone());
                }
            }
            first = false;
        }
        out.retain(|g| *g != object.to_lowercase());
        out
    }

    /// Every object inside group `gid`, nested groups expanded, cycles guarded.
    pub fn transitive_members(&self, gid: &str) -> Vec<String> {
        let start = gid.to_lowercase();
        let mut seen: HashSet<String> = HashSet::new();
        seen.insert(start.clone());
        let mut out = Vec::new();
        let mut queue = VecDeque::from([start]);
        while let Some(cur) = queue.pop_front() {
            for m in self.members.get(&cur).into_iter().flatten() {
                if seen.insert(m.clone()) {
                    out.push(m.clone());
                    if self.members.contains_key(m) {
                        queue.push_back(m.clone());
                    }
                }
            }
        }
        out
    }

    fn bump(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Applies `f` to a user's properties and marks the user changed (for delta).
    pub fn update_user(&mut self, key: &str, f: impl FnOnce(&mut Props)) -> bool {
        let Some(i) = self.find_user(key) else {
            return false;
        };
        let seq = self.bump();
        let old = self.users[i].props.clone();
        f(&mut self.users[i].props);
        if let Some(upn) = old.get("userPrincipalName").and_then(Value::as_str) {
            self.by_upn.remove(&upn.to_lowercase());
        }
        let props = self.users[i].props.clone();
        self.index_user(i, &props);
        self.users[i].changed_at = seq;
        true
    }

    /// Adds a new user (or replaces one with the same id) and marks it changed.
    pub fn upsert_user(&mut self, props: Props) {
        let seq = self.bump();
        let id = id_of(&props);
        let i = match self.by_id.get(&id) {
            Some(&i) => i,
            None => {
                self.users.push(UserEntry {
                    props: Props::new(),
                    changed_at: seq,
                    removed: None,
                });
                self.users.len() - 1
            }
        };
        self.index_user(i, &props);
        self.users[i] = UserEntry {
            props,
            changed_at: seq,
            removed: None,
        };
    }

    pub fn remove_user(&mut self, key: &str, removal: Removal) -> bool {
        let Some(i) = self.find_user(key) else {
            return false;
        };
        let seq = self.bump();
        self.users[i].removed = Some(removal);
        self.users[i].changed_at = seq;
        let id = id_of(&self.users[i].props);
        for ms in self.members.values_mut() {
            ms.retain(|m| *m != id);
        }
        self.parents.remove(&id);
        true
    }
}
