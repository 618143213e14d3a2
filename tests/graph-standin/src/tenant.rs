//! The directory content served by the stand-in: users, groups, directory roles and who is a
//! member of what. Loaded from JSON (`fixtures/azure/tenant.json`), optionally grown with
//! generated bulk users.

use std::collections::HashMap;

use serde_json::{Map, Value};

/// One directory object's Graph properties, exactly as they are returned (camelCase names).
pub type Props = Map<String, Value>;

const FIXTURE_JSON: &str = include_str!("../../../fixtures/azure/tenant.json");

/// A tenant: app registration credentials plus directory content.
#[derive(Clone, Debug)]
pub struct Tenant {
    pub tenant_id: String,
    /// Verified domains; the token endpoint accepts these in place of the tenant GUID.
    pub domains: Vec<String>,
    pub client_id: String,
    pub client_secret: String,
    pub(crate) users: Vec<Props>,
    pub(crate) groups: Vec<Props>,
    pub(crate) roles: Vec<Props>,
    /// Group or role id (lower case) → direct member ids (lower case), in declaration order.
    pub(crate) members: HashMap<String, Vec<String>>,
}

impl Tenant {
    /// The fixture tenant from `fixtures/azure/tenant.json` (see the README next to it).
    pub fn fixture() -> Tenant {
        Tenant::from_json(FIXTURE_JSON).expect("fixtures/azure/tenant.json is valid")
    }

    /// Parses a tenant file in the fixture's format. Keys starting with `_` are comments.
    /// `members` entries name a user by UPN, a group/role by displayName, or anything by id.
    pub fn from_json(text: &str) -> Result<Tenant, String> {
        let root: Value = serde_json::from_str(text).map_err(|e| format!("tenant JSON: {e}"))?;
        let field = |name: &str| -> Result<String, String> {
            root.get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| format!("tenant JSON: missing string field {name:?}"))
        };
        let list = |name: &str| -> Vec<Props> {
            root.get(name)
                .and_then(Value::as_array)
                .map(|items| {
                    items
                        .iter()
                        .filter_map(Value::as_object)
                        .map(strip_comments)
                        .collect()
                })
                .unwrap_or_default()
        };
        let domains = root
            .get("domains")
            .and_then(Value::as_array)
            .map(|d| {
                d.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let mut tenant = Tenant {
            tenant_id: field("tenant_id")?,
            domains,
            client_id: field("client_id")?,
            client_secret: field("client_secret")?,
            users: list("users"),
            groups: Vec::new(),
            roles: Vec::new(),
            members: HashMap::new(),
        };
        let mut groups = list("groups");
        let mut roles = list("directoryRoles");
        for u in &tenant.users {
            if id_of(u).is_empty() {
                return Err("tenant JSON: a user has no id".into());
            }
        }
        // Resolve member references once every object is known.
        let mut refs: HashMap<String, String> = HashMap::new();
        for u in &tenant.users {
            refs.insert(id_of(u), id_of(u));
            if let Some(upn) = u.get("userPrincipalName").and_then(Value::as_str) {
                refs.insert(upn.to_lowercase(), id_of(u));
            }
        }
        for g in groups.iter().chain(roles.iter()) {
            refs.insert(id_of(g), id_of(g));
            if let Some(name) = g.get("displayName").and_then(Value::as_str) {
                refs.insert(name.to_lowercase(), id_of(g));
            }
        }
        for g in groups.iter_mut().chain(roles.iter_mut()) {
            let gid = id_of(g);
            if gid.is_empty() {
                return Err("tenant JSON: a group or role has no id".into());
            }
            let mut ids = Vec::new();
            if let Some(Value::Array(m)) = g.remove("members") {
                for r in m.iter().filter_map(Value::as_str) {
                    let id = refs
                        .get(&r.to_lowercase())
                        .ok_or_else(|| format!("tenant JSON: unknown member {r:?} of {gid}"))?;
                    ids.push(id.clone());
                }
            }
            tenant.members.insert(gid, ids);
        }
        tenant.groups = groups;
        tenant.roles = roles;
        Ok(tenant)
    }

    /// Adds `n` generated members `bulk0000@contoso.test` … (ids `b0000000-0000-4000-8000-…`),
    /// user *i* in `Bulk Group {i % 10}`. Bulk Groups 5–9 are nested in Bulk Groups 0–4, and
    /// Bulk Groups 0–4 in `All Staff` when the tenant has one. Attributes cycle through a few
    /// departments, countries, companies, job titles, offices and employee types.
    pub fn with_bulk_users(mut self, n: usize) -> Tenant {
        const DEPARTMENTS: [&str; 5] = ["Engineering", "Sales", "Marketing", "Finance", "Support"];
        const COUNTRIES: [(&str, &str); 4] = [
            ("Germany", "DE"),
            ("United States", "US"),
            ("France", "FR"),
            ("Japan", "JP"),
        ];
        const COMPANIES: [&str; 2] = ["Contoso Ltd", "Contoso Inc"];
        const TITLES: [&str; 3] = ["Engineer", "Manager", "Analyst"];
        const TYPES: [&str; 2] = ["Employee", "Contractor"];
        let domain = self
            .domains
            .first()
            .cloned()
            .unwrap_or_else(|| "contoso.test".into());
        let width = n.saturating_sub(1).to_string().len().max(4);
        let group_ids: Vec<String> = (0..10)
            .map(|k| format!("b1000000-0000-4000-8000-{k:012x}"))
            .collect();
        let all_staff = self
            .groups
            .iter()
            .find(|g| g.get("displayName").and_then(Value::as_str) == Some("All Staff"))
            .map(id_of);
        for (k, gid) in group_ids.iter().enumerate() {
            if self.members.contains_key(gid) {
                continue;
            }
            let mut g = Props::new();
            g.insert("id".into(), gid.clone().into());
            g.insert("displayName".into(), format!("Bulk Group {k}").into());
            g.insert("mailEnabled".into(), false.into());
            g.insert("securityEnabled".into(), true.into());
            g.insert("groupTypes".into(), Value::Array(Vec::new()));
            g.insert("mailNickname".into(), format!("bulk-group-{k}").into());
            self.groups.push(g);
            self.members.insert(gid.clone(), Vec::new());
        }
        for k in 0..5 {
            let child = group_ids[k + 5].clone();
            self.add_member(&group_ids[k], child);
            if let Some(top) = &all_staff {
                self.add_member(top, group_ids[k].clone());
            }
        }
        let start = self
            .users
            .iter()
            .filter(|u| id_of(u).starts_with("b0000000-"))
            .count();
        self.users.reserve(n);
        for i in start..start + n {
            let id = format!("b0000000-0000-4000-8000-{i:012x}");
            let upn = format!("bulk{i:0width$}@{domain}");
            let (country, usage) = COUNTRIES[i % COUNTRIES.len()];
            let mut u = Props::new();
            u.insert("id".into(), id.clone().into());
            u.insert("userPrincipalName".into(), upn.clone().into());
            u.insert("mail".into(), upn.into());
            u.insert(
                "displayName".into(),
                format!("Bulk User {i:0width$}").into(),
            );
            u.insert("givenName".into(), "Bulk".into());
            u.insert("surname".into(), format!("User {i:0width$}").into());
            u.insert(
                "department".into(),
                DEPARTMENTS[i % DEPARTMENTS.len()].into(),
            );
            u.insert("country".into(), country.into());
            u.insert("usageLocation".into(), usage.into());
            u.insert("companyName".into(), COMPANIES[i % COMPANIES.len()].into());
            u.insert("jobTitle".into(), TITLES[i % TITLES.len()].into());
            u.insert("officeLocation".into(), format!("Site {}", i % 7).into());
            u.insert("employeeType".into(), TYPES[i % TYPES.len()].into());
            u.insert("accountEnabled".into(), true.into());
            u.insert("userType".into(), "Member".into());
            self.users.push(u);
            let gid = group_ids[i % 10].clone();
            self.add_member(&gid, id);
        }
        self
    }

    /// Number of users (fixture plus bulk).
    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// A user's properties by object id or userPrincipalName (case-insensitive).
    pub fn user(&self, id_or_upn: &str) -> Option<&Props> {
        let key = id_or_upn.to_lowercase();
        self.users.iter().find(|u| {
            id_of(u) == key
                || u.get("userPrincipalName")
                    .and_then(Value::as_str)
                    .is_some_and(|upn| upn.to_lowercase() == key)
        })
    }

    /// A user's object id by id or UPN.
    pub fn user_id(&self, id_or_upn: &str) -> Option<String> {
        self.user(id_or_upn).map(id_of)
    }

    /// A group's (or directory role's) object id by displayName (case-insensitive).
    pub fn group_id(&self, display_name: &str) -> Option<String> {
        let key = display_name.to_lowercase();
        self.groups
            .iter()
            .chain(self.roles.iter())
            .find(|g| {
                g.get("displayName")
                    .and_then(Value::as_str)
                    .is_some_and(|n| n.to_lowercase() == key)
            })
            .map(id_of)
    }

    fn add_member(&mut self, group: &str, member: String) {
        let list = self.members.entry(group.to_owned()).or_default();
        if !list.contains(&member) {
            list.push(member);
        }
    }
}

/// An object's id, lower-cased (ids compare case-insensitively).
pub(crate) fn id_of(p: &Props) -> String {
    p.get("id")
        .and_then(Value::as_str)
        .map(str::to_lowercase)
        .unwrap_or_default()
}

fn strip_comments(p: &Props) -> Props {
    p.iter()
        .filter(|(k, _)| !k.starts_with('_'))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}
