//! The decisions of a sync run, without I/O: given what the directory reports and what imd
//! stores, which users to import, update, re-enable, preserve and delete. Time is a parameter
//! (`now`, and `as_of` for previews), so retention can be tested without waiting.

use std::collections::{HashMap, HashSet};

use crate::resolve::DirectoryUser;
use crate::store::{
    ProfileRow, SyncRunUserRow, SyncSettingsRow, SyncStoredUser as UserRow, SyncUserValues,
    SyncWrite, UserStatus, groups_digest, groups_json,
};

/// What the directory says about one user, with the mapping already decided.
#[derive(Debug, Clone)]
pub enum Seen {
    /// Enabled and under a mapping (`auto_import` of that mapping).
    Mapped {
        user: Box<DirectoryUser>,
        auto_import: bool,
    },
    /// Under a mapping but not importable (no email, an invalid one): the reason. Reported
    /// when the mapping imports (`auto_import`) or imd already has the user.
    Invalid {
        external_id: String,
        name: String,
        reason: String,
        auto_import: bool,
    },
    /// Disabled, or removed (Graph `@removed`): the reason.
    Disabled { external_id: String, reason: String },
    /// Enabled but under no mapping (only reported explicitly by delta passes; a full pass
    /// finds these as "stored but not mapped" at its end).
    Unmapped { external_id: String, reason: String },
}

/// A change with the report line that describes it.
#[derive(Debug)]
pub struct Planned {
    pub write: Option<SyncWrite>,
    pub line: SyncRunUserRow,
}

/// One source's (`ldap`, `azure`) decisions for a run.
pub struct Planner {
    pub source: &'static str,
    /// How long reading the stored users took, in milliseconds (the run's report shows it).
    pub load_ms: u64,
    settings: SyncSettingsRow,
    /// Stored directory users by external id.
    stored: HashMap<String, UserRow>,
    /// External ids the directory reported in this pass, and those it put under a mapping.
    seen: HashSet<String>,
    mapped: HashSet<String>,
    disabled: HashMap<String, String>,
    unmapped: HashMap<String, String>,
}

impl Planner {
    pub fn new(source: &'static str, settings: SyncSettingsRow, stored: Vec<UserRow>) -> Planner {
        let stored = stored
            .into_iter()
            .map(|u| (u.external_id.to_ascii_lowercase(), u))
            .collect();
        Planner {
            source,
            load_ms: 0,
            settings,
            stored,
            seen: HashSet::new(),
            mapped: HashSet::new(),
            disabled: HashMap::new(),
            unmapped: HashMap::new(),
        }
    }

    /// Users the directory has reported so far.
    pub fn seen(&self) -> usize {
        self.seen.len()
    }

    /// Whether the user was already put under a mapping in this pass (an earlier mapping by
    /// priority wins).
    pub fn is_mapped(&self, external_id: &str) -> bool {
        self.mapped.contains(external_id)
    }

    /// The stored user with this directory id.
    pub fn stored(&self, external_id: &str) -> Option<&UserRow> {
        self.stored.get(external_id)
    }

    /// A user found under a mapping exactly as stored: seen and mapped, nothing to write.
    pub fn unchanged(&mut self, external_id: String) {
        self.seen.insert(external_id.clone());
        self.disabled.remove(&external_id);
        self.unmapped.remove(&external_id);
        self.mapped.insert(external_id);
    }

    /// Notes a user seen but not (yet) under a mapping; a later mapping may still take it.
    pub fn saw(&mut self, external_id: &str) {
        self.seen.insert(external_id.to_string());
    }

    /// Directory users imd stores for this source and has not deleted.
    pub fn stored_count(&self) -> usize {
        self.stored
            .values()
            .filter(|u| u.status() != UserStatus::Deleted)
            .count()
    }

    /// The change (if any) one observation calls for now. Preserves are only decided at the
    /// end (`finish`), since they need the whole pass.
    pub fn observe(&mut self, seen: Seen) -> Vec<Planned> {
        match seen {
            Seen::Disabled {
                external_id,
                reason,
            } => {
                self.seen.insert(external_id.clone());
                self.mapped.remove(&external_id);
                self.disabled.insert(external_id, reason);
                Vec::new()
            }
            Seen::Unmapped {
                external_id,
                reason,
            } => {
                self.seen.insert(external_id.clone());
                self.unmapped.insert(external_id, reason);
                Vec::new()
            }
            Seen::Invalid {
                external_id,
                name,
                reason,
                auto_import,
            } => {
                self.seen.insert(external_id.clone());
                self.mapped.insert(external_id.clone());
                let stored = self.stored.get(&external_id);
                if stored.is_none() && !auto_import {
                    return Vec::new();
                }
                vec![Planned {
                    write: None,
                    line: self.line("skipped", stored, &external_id, None, &name, reason),
                }]
            }
            Seen::Mapped { user, auto_import } => {
                let ext = user.external_id.clone();
                self.seen.insert(ext.clone());
                self.mapped.insert(ext.clone());
                self.disabled.remove(&ext);
                self.unmapped.remove(&ext);
                let mut out: Vec<Planned> =
                    self.mapped_change(&user, auto_import).into_iter().collect();
                if out.first().is_some_and(|p| p.line.action == "reenabled")
                    && let Some(p) = self.update(&user)
                {
                    out.push(p);
                }
                out
            }
        }
    }

    fn mapped_change(&self, u: &DirectoryUser, auto_import: bool) -> Option<Planned> {
        let name = u
            .attrs
            .as_ref()
            .and_then(|a| a.display_name.clone())
            .unwrap_or_else(|| u.user_name.clone());
        let Some(stored) = self.stored.get(&u.external_id) else {
            if !auto_import {
                return None;
            }
            let values = self.values(u, None);
            return Some(Planned {
                line: self.line(
                    "imported",
                    None,
                    &u.external_id,
                    Some(values.email.clone()),
                    &name,
                    "new in the directory under a mapping with auto_import".into(),
                ),
                write: Some(SyncWrite::Import(values)),
            });
        };
        match stored.status() {
            UserStatus::Deleted => Some(Planned {
                write: None,
                line: self.line(
                    "skipped",
                    Some(stored),
                    &u.external_id,
                    Some(u.email.as_str().to_string()),
                    &name,
                    "deleted by an earlier sync; a deleted user is never imported or re-enabled again".into(),
                ),
            }),
            UserStatus::Preserved => {
                // Re-enabled with its details brought up to date in the same write.
                Some(Planned {
                    line: self.line(
                        "reenabled",
                        Some(stored),
                        &u.external_id,
                        Some(u.email.as_str().to_string()),
                        &name,
                        "enabled again in the directory and under a mapping".into(),
                    ),
                    write: Some(SyncWrite::Reenable {
                        user_id: stored.id.clone(),
                        reason: "enabled again in the directory and under a mapping".into(),
                    }),
                })
            }
            UserStatus::Active => self.update(u),
        }
    }

    /// The detail update a known user needs, if any (also after a re-enable: a preserved user
    /// may have changed too).
    fn update(&self, u: &DirectoryUser) -> Option<Planned> {
        let stored = self.stored.get(&u.external_id)?;
        if !self.settings.auto_update_user_details {
            return None;
        }
        let name = u
            .attrs
            .as_ref()
            .and_then(|a| a.display_name.clone())
            .unwrap_or_else(|| u.user_name.clone());
        let values = self.values(u, Some(stored));
        let changed = changes(stored, &values);
        if changed.is_empty() {
            return None;
        }
        {
            {
                Some(Planned {
                    line: self.line(
                        "updated",
                        Some(stored),
                        &u.external_id,
                        Some(values.email.clone()),
                        &name,
                        format!("changed: {}", changed.join(", ")),
                    ),
                    write: Some(SyncWrite::Update {
                        user_id: stored.id.clone(),
                        values,
                    }),
                })
            }
        }
    }

    /// The values a user is written with. The mapping's profile, storage region and quota only
    /// replace the stored ones when the winning mapping changed (an admin's own change to a
    /// user's profile under the same mapping stays).
    fn values(&self, u: &DirectoryUser, stored: Option<&UserRow>) -> SyncUserValues {
        let a = u.assignment.as_ref();
        let (profile, storage_region, quota_bytes, mapping_id) = match (stored, a) {
            (Some(s), Some(a)) if s.mapping_id.as_deref() == Some(a.mapping_id.as_str()) => (
                s.profile.clone(),
                s.storage_region.clone(),
                s.quota_bytes,
                s.mapping_id.clone(),
            ),
            (_, Some(a)) => (
                a.profile.clone(),
                a.storage_region.clone(),
                a.quota_bytes,
                Some(a.mapping_id.clone()),
            ),
            (Some(s), None) => (
                s.profile.clone(),
                s.storage_region.clone(),
                s.quota_bytes,
                s.mapping_id.clone(),
            ),
            (None, None) => ("default".into(), "default".into(), None, None),
        };
        SyncUserValues {
            email: u.email.as_str().to_string(),
            email_norm: u.email.normalized().to_string(),
            user_name: u.user_name.clone(),
            external_id: u.external_id.clone(),
            source: self.source,
            profile,
            storage_region,
            quota_bytes,
            mapping_id,
            attrs: u.attrs.clone().unwrap_or_default(),
            keep_groups: self.source == "azure",
        }
    }

    /// The preserves a complete pass calls for: disabled users, and (with
    /// `auto_preserve_unmapped_users`) users under no mapping. `full`: the pass saw every user
    /// under the mappings, so a stored user it did not map is unmapped; a delta pass only
    /// knows the users it was told about.
    pub fn preserves(&self, full: bool, since: i64) -> Vec<Planned> {
        let mut out = Vec::new();
        let mut ids: Vec<&String> = self.stored.keys().collect();
        ids.sort();
        for ext in ids {
            let u = &self.stored[ext];
            if u.status() != UserStatus::Active {
                continue;
            }
            let reason = if let Some(r) = self.disabled.get(ext) {
                r.clone()
            } else if !self.settings.auto_preserve_unmapped_users {
                continue;
            } else if let Some(r) = self.unmapped.get(ext) {
                r.clone()
            } else if full && !self.mapped.contains(ext) {
                if self.seen.contains(ext) {
                    "no longer under any mapping (auto_preserve_unmapped_users)".into()
                } else {
                    "not found under any mapping in the directory (auto_preserve_unmapped_users)"
                        .into()
                }
            } else {
                continue;
            };
            out.push(Planned {
                line: self.line(
                    "preserved",
                    Some(u),
                    ext,
                    Some(u.email.clone()),
                    u.display_name.as_deref().unwrap_or(&u.user_name),
                    reason.clone(),
                ),
                write: Some(SyncWrite::Preserve {
                    user_id: u.id.clone(),
                    reason,
                    since,
                }),
            });
        }
        out
    }

    /// Preserved users whose profile deletes them at `at` (preserved longer than its
    /// `delete_after_days`, with `auto_delete_preserved` on). Users this pass re-enables or
    /// reports enabled and mapped are left out. `preserving_now` (ids with the time): users
    /// this run is about to preserve, which a preview at a later `as_of` counts as preserved
    /// from then.
    pub fn deletes(
        &self,
        profiles: &[ProfileRow],
        at: i64,
        preserving_now: &HashMap<String, i64>,
    ) -> Vec<Planned> {
        let policy: HashMap<&str, &ProfileRow> =
            profiles.iter().map(|p| (p.name.as_str(), p)).collect();
        let mut out = Vec::new();
        let mut ids: Vec<&String> = self.stored.keys().collect();
        ids.sort();
        for ext in ids {
            let u = &self.stored[ext];
            let since = match u.status() {
                UserStatus::Preserved if !self.mapped.contains(ext) => u.preserved_at,
                UserStatus::Active => preserving_now.get(&u.id).copied(),
                _ => None,
            };
            let (Some(p), Some(since)) = (policy.get(u.profile.as_str()), since) else {
                continue;
            };
            if !p.auto_delete_preserved || since + p.delete_after_days * 86_400 > at {
                continue;
            }
            let reason = format!(
                "preserved since {} for longer than profile \"{}\" keeps preserved users ({} days)",
                crate::clock::rfc3339(since),
                p.name,
                p.delete_after_days
            );
            let mut line = self.line(
                "deleted",
                Some(u),
                ext,
                Some(u.email.clone()),
                u.display_name.as_deref().unwrap_or(&u.user_name),
                reason.clone(),
            );
            line.preserved_at = Some(since);
            out.push(Planned {
                line,
                write: Some(SyncWrite::Delete {
                    user_id: u.id.clone(),
                    preserved_at: since,
                    reason,
                }),
            });
        }
        out
    }

    fn line(
        &self,
        action: &str,
        stored: Option<&UserRow>,
        external_id: &str,
        email: Option<String>,
        name: &str,
        reason: String,
    ) -> SyncRunUserRow {
        SyncRunUserRow {
            seq: 0,
            action: action.into(),
            user_id: stored.map(|u| u.id.clone()),
            external_id: Some(external_id.to_string()),
            source: self.source.into(),
            email,
            name: Some(name.to_string()),
            reason: Some(reason),
            applied: true,
            preserved_at: None,
        }
    }

    /// Stored users (active or preserved) this pass did not report at all: a full Azure pass
    /// asks Graph about each (a user deleted while no delta link covered it).
    pub fn unseen(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .stored
            .iter()
            .filter(|(ext, u)| u.status() != UserStatus::Deleted && !self.seen.contains(*ext))
            .map(|(ext, _)| ext.clone())
            .collect();
        out.sort();
        out
    }

    /// Stored preserved users a retention rule would delete at `at`, by external id (an Azure
    /// delta pass re-checks them with Graph first).
    pub fn delete_candidates(&self, profiles: &[ProfileRow], at: i64) -> Vec<String> {
        self.deletes(profiles, at, &HashMap::new())
            .into_iter()
            .filter_map(|p| p.line.external_id)
            .collect()
    }
}

/// Which stored fields `v` changes.
fn changes(s: &UserRow, v: &SyncUserValues) -> Vec<&'static str> {
    let a = &v.attrs;
    let mut out = Vec::new();
    let mut check = |name: &'static str, differs: bool| {
        if differs {
            out.push(name);
        }
    };
    check("email", s.email != v.email);
    check("user_name", s.user_name != v.user_name);
    check("display_name", s.display_name != a.display_name);
    check("login", s.login != a.login);
    check("upn", s.upn != a.upn);
    check("dn", s.dn != a.dn);
    check("department", s.department != a.department);
    check("country", s.country != a.country);
    if !v.keep_groups {
        check(
            "groups",
            s.groups_digest != groups_digest(Some(&groups_json(&a.groups))),
        );
    }
    check("mapping", s.mapping_id != v.mapping_id);
    check("profile", s.profile != v.profile);
    check("storage_region", s.storage_region != v.storage_region);
    check("quota", s.quota_bytes != v.quota_bytes);
    out
}

/// Whether held-back preserves and deletes are a mass change: more than both the minimum and
/// the percentage of the directory's users.
pub fn is_mass_change(settings: &SyncSettingsRow, changes: usize, population: usize) -> bool {
    let changes = changes as i64;
    changes > settings.mass_change_threshold_min
        && changes * 100 > settings.mass_change_threshold_percent * population as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> SyncSettingsRow {
        SyncSettingsRow::default()
    }

    #[test]
    fn mass_change_needs_both_the_minimum_and_the_percentage() {
        let s = settings(); // 5 %, min 10
        assert!(
            !is_mass_change(&s, 10, 100),
            "10 is not more than the minimum"
        );
        assert!(is_mass_change(&s, 11, 100));
        assert!(!is_mass_change(&s, 11, 1000), "1.1 % of 1000");
        assert!(is_mass_change(&s, 60, 1000));
        assert!(!is_mass_change(&s, 0, 0));
    }
}
