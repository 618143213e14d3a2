//! The connector's `Directory` against real servers: OpenLDAP and a Samba AD DC started by
//! `scripts/directories.sh start DIR` (which prints the TEST_* variables read here). Without
//! them the tests skip, unless REQUIRE_DIRECTORIES=1 (CI), where they fail.

use std::collections::HashSet;
use std::process::Command;

use imd::connector::config::ConnectorConfig;
use imd::connector::directory::Directory;
use imd::connector::proto::{DirUser, OpErrorCode, OpResult, Operation, PasswordVerdict, RootDse};

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    OpenLdap,
    Samba,
}

struct Server {
    kind: Kind,
    url: String,
    tls_url: String,
    ca: String,
    bind_dn: String,
    password: String,
    base: String,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn server(kind: Kind) -> Option<Server> {
    let p = match kind {
        Kind::OpenLdap => "TEST_OPENLDAP",
        Kind::Samba => "TEST_SAMBA",
    };
    let tls_var = match kind {
        Kind::OpenLdap => "TEST_OPENLDAPS_URL".to_owned(),
        Kind::Samba => "TEST_SAMBA_LDAPS_URL".to_owned(),
    };
    let got = (|| {
        Some(Server {
            kind,
            url: var(&format!("{p}_URL"))?,
            tls_url: var(&tls_var)?,
            ca: var(&format!("{p}_CA"))?,
            bind_dn: var(&format!("{p}_BIND_DN"))?,
            password: var(&format!("{p}_BIND_PASSWORD"))?,
            base: var(&format!("{p}_BASE"))?,
        })
    })();
    if got.is_none() {
        if var("REQUIRE_DIRECTORIES").as_deref() == Some("1") {
            panic!("{p}_* variables unset; run: eval \"$(scripts/directories.sh start DIR)\"");
        }
        eprintln!("skipping: {p}_* unset (scripts/directories.sh start DIR prints them)");
    }
    got
}

impl Server {
    fn config_with(&self, urls: &[&str], extra: &str) -> ConnectorConfig {
        let (kind, attrs) = match self.kind {
            Kind::OpenLdap => (
                "openldap",
                "[directory.attributes]\nenabled = \"employeeActive\"\n",
            ),
            Kind::Samba => ("ad", ""),
        };
        let urls: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
        let toml = format!(
            "[directory]\nkind = {kind:?}\nurls = [{}]\nbind_dn = {:?}\nbind_password = {:?}\n\
             base_dn = {:?}\ntimeout_secs = 15\n{extra}\n{attrs}",
            urls.join(", "),
            self.bind_dn,
            self.password,
            self.base
        );
        ConnectorConfig::from_toml_str(&toml).unwrap()
    }

    fn dir(&self) -> Directory {
        Directory::new(&self.config_with(&[&self.url], "")).unwrap()
    }

    fn dept_attr(&self) -> &'static str {
        match self.kind {
            Kind::OpenLdap => "departmentNumber",
            Kind::Samba => "department",
        }
    }

    fn dn(&self, rdn: &str) -> String {
        format!("{rdn},{}", self.base)
    }

    fn groups_ou(&self) -> &'static str {
        match self.kind {
            Kind::OpenLdap => "ou=groups",
            Kind::Samba => "OU=Groups",
        }
    }

    fn group(&self, cn: &str) -> String {
        let c = if self.kind == Kind::OpenLdap {
            "cn"
        } else {
            "CN"
        };
        self.dn(&format!("{c}={cn},{}", self.groups_ou()))
    }
}

fn both() -> Vec<Server> {
    [Kind::OpenLdap, Kind::Samba]
        .into_iter()
        .filter_map(server)
        .collect()
}

async fn lookup(dir: &Directory, login: &str, filters: &[&str]) -> Option<DirUser> {
    lookup_full(dir, Some(login), None, None, filters).await
}

async fn lookup_full(
    dir: &Directory,
    login: Option<&str>,
    domain: Option<&str>,
    upn: Option<&str>,
    filters: &[&str],
) -> Option<DirUser> {
    let r = dir
        .execute(Operation::LookupUser {
            login: login.map(Into::into),
            domain: domain.map(Into::into),
            upn: upn.map(Into::into),
            filters: filters.iter().map(|f| f.to_string()).collect(),
        })
        .await
        .unwrap_or_else(|e| panic!("lookup {login:?}: {e:?}"));
    match r {
        OpResult::User { user } => user,
        other => panic!("{other:?}"),
    }
}

async fn root_dse(dir: &Directory) -> RootDse {
    match dir.execute(Operation::RootDse).await.unwrap() {
        OpResult::RootDse(d) => d,
        other => panic!("{other:?}"),
    }
}

async fn verify(
    dir: &Directory,
    login: &str,
    password: &str,
) -> (PasswordVerdict, Option<DirUser>) {
    let r = dir
        .execute(Operation::VerifyPassword {
            login: Some(login.into()),
            domain: None,
            upn: None,
            password: password.into(),
            filters: vec![],
        })
        .await
        .unwrap();
    match r {
        OpResult::Password(p) => (p.verdict, p.user),
        other => panic!("{other:?}"),
    }
}

fn lower(v: &[String]) -> HashSet<String> {
    v.iter().map(|s| s.to_lowercase()).collect()
}

#[tokio::test]
async fn root_dse_on_both() {
    for s in both() {
        let d = root_dse(&s.dir()).await;
        assert!(d.supports_paging, "paging not advertised");
        assert!(
            d.naming_contexts
                .iter()
                .any(|n| n.eq_ignore_ascii_case(&s.base)),
            "{:?}",
            d.naming_contexts
        );
        assert_eq!(d.base_dn, s.base);
        if s.kind == Kind::Samba {
            assert_eq!(d.default_naming_context.as_deref(), Some(s.base.as_str()));
            assert_eq!(d.netbios_domain.as_deref(), Some("EXAMPLE"));
            assert_eq!(d.dns_domain.as_deref(), Some("example.test"));
            let t = d.server_time.expect("AD reports currentTime");
            assert!(t.ends_with('Z') && t.contains('T'), "{t}");
            assert!(d.server.to_lowercase().contains("dc1"), "{}", d.server);
        } else {
            assert_eq!(d.default_naming_context, None);
            assert_eq!(d.server, s.url);
        }
    }
}

#[tokio::test]
async fn lookup_by_login_and_upn_with_nested_groups() {
    for s in both() {
        let dir = s.dir();
        let a = lookup(&dir, "alice", &[]).await.expect("alice");
        assert_eq!(a.login.as_deref(), Some("alice"));
        assert_eq!(a.name.as_deref(), Some("Alice Anderson"));
        assert_eq!(a.department.as_deref(), Some("Engineering"));
        assert_eq!(a.country.as_deref(), Some("US"));
        assert!(a.enabled);
        // staff > engineers > backend > alice, plus admins directly
        let g = lower(&a.groups);
        for cn in ["backend", "engineers", "staff", "admins"] {
            assert!(
                g.contains(&s.group(cn).to_lowercase()),
                "{cn} missing: {g:?}"
            );
        }
        assert!(!g.contains(&s.group("sales").to_lowercase()));
        uuid::Uuid::parse_str(&a.id).expect("canonical uuid");
        assert_eq!(a.id, a.id.to_lowercase());

        let (upn, expect_email) = match s.kind {
            Kind::OpenLdap => ("alice@example.com", "alice@example.com"),
            Kind::Samba => ("alice@example.test", "alice@example.test"),
        };
        let b = lookup_full(&dir, None, None, Some(upn), &[])
            .await
            .expect("by upn");
        assert_eq!(b.id, a.id);
        assert_eq!(b.email.as_deref(), Some(expect_email));
        if s.kind == Kind::Samba {
            assert_eq!(b.upn.as_deref(), Some("alice@example.test"));
        }
        assert!(
            lookup_full(&dir, None, None, Some("nobody@example.test"), &[])
                .await
                .is_none()
        );
    }
}

#[tokio::test]
async fn ids_match_what_the_server_tools_print() {
    if let Some(s) = server(Kind::Samba) {
        let conf = std::env::var("TEST_SAMBA_CONF").expect("TEST_SAMBA_CONF");
        let out = Command::new("samba-tool")
            .args(["user", "show", "alice", "-s", &conf])
            .output()
            .expect("samba-tool");
        let text = String::from_utf8_lossy(&out.stdout);
        let guid = text
            .lines()
            .find_map(|l| l.strip_prefix("objectGUID: "))
            .unwrap_or_else(|| panic!("no objectGUID in {text}"))
            .trim()
            .to_owned();
        let a = lookup(&s.dir(), "alice", &[]).await.unwrap();
        assert_eq!(a.id, guid);
    }
    if let Some(s) = server(Kind::OpenLdap) {
        let out = Command::new("ldapsearch")
            .args([
                "-x",
                "-LLL",
                "-H",
                &s.url,
                "-D",
                &s.bind_dn,
                "-w",
                &s.password,
            ])
            .args(["-b", &s.base, "(uid=alice)", "entryUUID"])
            .output()
            .expect("ldapsearch");
        let text = String::from_utf8_lossy(&out.stdout);
        let id = text
            .lines()
            .find_map(|l| l.strip_prefix("entryUUID: "))
            .unwrap_or_else(|| panic!("no entryUUID in {text}"))
            .trim()
            .to_owned();
        let a = lookup(&s.dir(), "alice", &[]).await.unwrap();
        assert_eq!(a.id, id);
    }
}

#[tokio::test]
async fn domains_disabled_no_email_and_non_ascii() {
    for s in both() {
        let dir = s.dir();
        if s.kind == Kind::Samba {
            for d in ["EXAMPLE", "example", "example.test", "EXAMPLE.TEST"] {
                assert!(
                    lookup_full(&dir, Some("alice"), Some(d), None, &[])
                        .await
                        .is_some(),
                    "domain {d}"
                );
            }
            for d in ["OTHER", "example.com", "EXAMPLE2"] {
                assert!(
                    lookup_full(&dir, Some("alice"), Some(d), None, &[])
                        .await
                        .is_none(),
                    "domain {d} accepted"
                );
            }
        } else {
            // OpenLDAP without configured domains ignores the domain
            assert!(
                lookup_full(&dir, Some("alice"), Some("ANY"), None, &[])
                    .await
                    .is_some()
            );
        }
        let f = lookup(&dir, "frank", &[]).await.unwrap();
        assert!(!f.enabled, "frank is disabled");
        assert!(lookup(&dir, "alice", &[]).await.unwrap().enabled);
        let d = lookup(&dir, "dave", &[]).await.unwrap();
        assert_eq!(d.email, None);
        let z = lookup(&dir, "zoe", &[]).await.unwrap();
        assert_eq!(z.name.as_deref(), Some("Zoë Ångström"));
        let j = lookup(&dir, "jmueller", &[]).await.unwrap();
        assert_eq!(j.name.as_deref(), Some("Jürgen Müller"));
        assert!(j.dn.to_lowercase().contains("berlin"), "{}", j.dn);
        // a DN with an escaped comma must survive as a filter value (member= / in-chain)
        let js = lookup(&dir, "jsmith", &[]).await.unwrap();
        assert_eq!(js.name.as_deref(), Some("Smith, John"));
        // OpenLDAP normalises the escaped comma to \2C
        assert!(
            js.dn.contains("Smith\\, John") || js.dn.contains("Smith\\2C John"),
            "{}",
            js.dn
        );
        assert!(
            lower(&js.groups).contains(&s.group("staff").to_lowercase()),
            "{:?}",
            js.groups
        );
        if s.kind == Kind::OpenLdap {
            // groupOfUniqueNames membership and a membership cycle terminate
            assert!(lower(&z.groups).contains(&s.group("design").to_lowercase()));
            let b = lookup(&dir, "bob", &[]).await.unwrap();
            let g = lower(&b.groups);
            assert!(g.contains(&s.group("cycle-a").to_lowercase()));
            assert!(g.contains(&s.group("cycle-b").to_lowercase()));
            assert_eq!(g.len(), b.groups.len(), "duplicates: {:?}", b.groups);
        }
    }
}

#[tokio::test]
async fn matched_filters_and_injection() {
    for s in both() {
        let dir = s.dir();
        let sales = format!("({}=Sales)", s.dept_attr());
        let eng = format!("({}=Engineering)", s.dept_attr());
        let c = lookup(&dir, "carol", &[&eng, &sales, "(c=DE)"])
            .await
            .unwrap();
        assert_eq!(c.matched_filters, vec![1, 2]);
        let a = lookup(&dir, "alice", &[&eng, &sales, "(c=DE)"])
            .await
            .unwrap();
        assert_eq!(a.matched_filters, vec![0]);
        let e = dir
            .execute(Operation::LookupUser {
                login: Some("alice".into()),
                domain: None,
                upn: None,
                filters: vec![sales.clone(), "(department=Sales".into()],
            })
            .await
            .unwrap_err();
        assert_eq!(e.code, OpErrorCode::InvalidRequest);
        assert!(e.message.contains("filters[1]"), "{}", e.message);

        let long = "a".repeat(10_000);
        for hostile in [
            "*",
            "*)(uid=*",
            "*)(sAMAccountName=*",
            "admin)(|(x=*",
            "alice)(|(objectClass=*",
            "al*",
            "alice\\",
            "alice\0",
            "",
            long.as_str(),
        ] {
            assert!(
                lookup(&dir, hostile, &[]).await.is_none(),
                "hostile login {hostile:?} matched"
            );
            assert!(
                lookup_full(&dir, None, None, Some(hostile), &[])
                    .await
                    .is_none(),
                "hostile upn {hostile:?} matched"
            );
        }
    }
}

#[tokio::test]
async fn passwords() {
    for s in both() {
        let dir = s.dir();
        let (v, u) = verify(&dir, "alice", "Passw0rd!alice").await;
        assert_eq!(v, PasswordVerdict::Valid);
        assert_eq!(u.unwrap().login.as_deref(), Some("alice"));
        // non-ASCII name, DN with an escaped comma
        assert_eq!(
            verify(&dir, "jsmith", "Passw0rd!jsmith").await.0,
            PasswordVerdict::Valid
        );
        assert_eq!(
            verify(&dir, "alice", "wrong").await.0,
            PasswordVerdict::Invalid
        );
        assert_eq!(verify(&dir, "alice", "").await.0, PasswordVerdict::Invalid);
        assert_eq!(
            verify(&dir, "nobody", "x").await.0,
            PasswordVerdict::Invalid
        );
        assert_eq!(
            verify(&dir, "*", "Passw0rd!alice").await.0,
            PasswordVerdict::Invalid
        );
        // frank: right password, disabled (Samba: bind says data 533; OpenLDAP: employeeActive)
        let (v, u) = verify(&dir, "frank", "Passw0rd!frank").await;
        assert_eq!(v, PasswordVerdict::Disabled);
        assert!(u.is_some());
        assert_eq!(
            verify(&dir, "frank", "wrong").await.0,
            PasswordVerdict::Invalid
        );
        // the pool still works after user binds (they ran on their own connections)
        assert!(lookup(&dir, "bob", &[]).await.is_some());
    }
}

async fn all_pages(dir: &Directory, op: impl Fn(Option<String>) -> Operation) -> Vec<String> {
    let mut cursor = None;
    let mut dns = Vec::new();
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(pages < 100, "runaway paging");
        match dir.execute(op(cursor.take())).await.unwrap() {
            OpResult::Users { items, next_cursor } => {
                dns.extend(items.into_iter().map(|u| u.dn));
                cursor = next_cursor;
            }
            OpResult::Entries { items, next_cursor } => {
                dns.extend(items.into_iter().map(|e| e.dn));
                cursor = next_cursor;
            }
            other => panic!("{other:?}"),
        }
        if cursor.is_none() {
            return dns;
        }
    }
}

#[tokio::test]
async fn paging_users_and_groups() {
    for s in both() {
        let dir = s.dir();
        let bulk = match s.kind {
            Kind::OpenLdap => s.dn("ou=bulk"),
            Kind::Samba => s.dn("OU=Bulk"),
        };
        let b = bulk.clone();
        let dns = all_pages(&dir, |cursor| Operation::SearchUsers {
            base: Some(b.clone()),
            filter: None,
            page_size: 200,
            cursor,
        })
        .await;
        assert_eq!(dns.len(), 1200, "{}", dns.len());
        assert_eq!(lower(&dns).len(), 1200, "duplicates across pages");

        // whole base with a filter ANDed in
        let f = format!("({}=Sales)", s.dept_attr());
        let sales = all_pages(&dir, |cursor| Operation::SearchUsers {
            base: None,
            filter: Some(f.clone()),
            page_size: 2,
            cursor,
        })
        .await;
        assert_eq!(sales.len(), 4, "{sales:?}");

        let groups = all_pages(&dir, |cursor| Operation::ListGroups {
            base: None,
            prefix: Some("bulkgrp-".into()),
            page_size: 7,
            cursor,
        })
        .await;
        assert_eq!(lower(&groups).len(), 30);
        assert_eq!(groups.len(), 30);
        // AD's builtin groups (Schema Admins, Server Operators) also start with "s": list the
        // fixture's groups OU only
        let groups_base = s.dn(s.groups_ou());
        let s_groups = all_pages(&dir, |cursor| Operation::ListGroups {
            base: Some(groups_base.clone()),
            prefix: Some("s".into()),
            page_size: 100,
            cursor,
        })
        .await;
        assert_eq!(
            lower(&s_groups),
            lower(&[s.group("staff"), s.group("sales")]),
            "{s_groups:?}"
        );
        // prefix is escaped: '*' matches nothing rather than everything
        let star = all_pages(&dir, |cursor| Operation::ListGroups {
            base: None,
            prefix: Some("*".into()),
            page_size: 100,
            cursor,
        })
        .await;
        assert!(star.is_empty(), "{star:?}");
    }
}

/// Look-ups multiplexed on shared connections (many in flight on `pool_size` = 2) give the same
/// users and groups as one at a time, never open more than `pool_size` shared connections, and
/// do not disturb a paging cursor (which keeps a connection of its own) running beside them.
#[tokio::test]
async fn concurrent_lookups_share_connections_beside_a_cursor() {
    for s in both() {
        let logins = [
            "alice", "bob", "carol", "dave", "frank", "heidi", "zoe", "jmueller", "bulk0001",
            "bulk0017", "nobody",
        ];
        let reference = s.dir();
        let mut expected = Vec::new();
        for l in logins {
            let u = lookup(&reference, l, &[]).await;
            expected.push(u.map(|u| (u.id, lower(&u.groups))));
        }
        let dir = Directory::new(&s.config_with(&[&s.url], "pool_size = 2")).unwrap();
        let bulk = match s.kind {
            Kind::OpenLdap => s.dn("ou=bulk"),
            Kind::Samba => s.dn("OU=Bulk"),
        };
        let page = |cursor| Operation::SearchUsers {
            base: Some(bulk.clone()),
            filter: None,
            page_size: 200,
            cursor,
        };
        let (mut dns, mut cursor) = match dir.execute(page(None)).await.unwrap() {
            OpResult::Users { items, next_cursor } => (
                items.into_iter().map(|u| u.dn).collect::<Vec<_>>(),
                next_cursor,
            ),
            other => panic!("{other:?}"),
        };
        assert!(cursor.is_some());
        let mut tasks = Vec::new();
        for i in 0..200 {
            let dir = dir.clone();
            let l = logins[i % logins.len()];
            tasks.push(tokio::spawn(async move {
                let u = lookup(&dir, l, &[]).await;
                (i, u.map(|u| (u.id, lower(&u.groups))))
            }));
        }
        // the cursor pages while the look-ups are in flight
        while let Some(c) = cursor.take() {
            match dir.execute(page(Some(c))).await.unwrap() {
                OpResult::Users { items, next_cursor } => {
                    dns.extend(items.into_iter().map(|u| u.dn));
                    cursor = next_cursor;
                }
                other => panic!("{other:?}"),
            }
        }
        for t in tasks {
            let (i, got) = t.await.unwrap();
            assert_eq!(
                got,
                expected[i % logins.len()],
                "{}",
                logins[i % logins.len()]
            );
        }
        assert_eq!(lower(&dns).len(), 1200);
        assert_eq!(dns.len(), 1200);
        let n = dir.shared_connections();
        assert!((1..=2).contains(&n), "{n} shared connections");
    }
}

#[tokio::test]
async fn search_users_carry_transitive_groups() {
    for s in both() {
        let dir = s.dir();
        let f = match s.kind {
            Kind::OpenLdap => "(uid=alice)",
            Kind::Samba => "(sAMAccountName=alice)",
        };
        let r = dir
            .execute(Operation::SearchUsers {
                base: None,
                filter: Some(f.into()),
                page_size: 10,
                cursor: None,
            })
            .await
            .unwrap();
        let OpResult::Users { items, .. } = r else {
            panic!()
        };
        assert_eq!(items.len(), 1);
        let g = lower(&items[0].groups);
        for cn in ["backend", "engineers", "staff", "admins"] {
            assert!(g.contains(&s.group(cn).to_lowercase()), "{cn}: {g:?}");
        }
        let e = dir
            .execute(Operation::SearchUsers {
                base: None,
                filter: Some("(department=Sales".into()),
                page_size: 10,
                cursor: None,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code, OpErrorCode::InvalidRequest);
    }
}

#[tokio::test]
async fn browsing_ous_and_missing_bases() {
    for s in both() {
        let dir = s.dir();
        let OpResult::Entries { items, .. } = dir
            .execute(Operation::ListOus { base: None })
            .await
            .unwrap()
        else {
            panic!()
        };
        let names: HashSet<String> = items.iter().map(|e| e.name.to_lowercase()).collect();
        for n in ["people", "contractors", "groups", "bulk"] {
            assert!(names.contains(n), "{n} missing: {names:?}");
        }
        if s.kind == Kind::Samba {
            let users = items.iter().find(|e| e.name == "Users").expect("CN=Users");
            assert_eq!(users.class, "container");
        }
        let people = match s.kind {
            Kind::OpenLdap => s.dn("ou=people"),
            Kind::Samba => s.dn("OU=People"),
        };
        let OpResult::Entries { items, .. } = dir
            .execute(Operation::ListOus { base: Some(people) })
            .await
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].name.to_lowercase(), "berlin");
        assert_eq!(items[0].class, "organizationalUnit");

        let e = dir
            .execute(Operation::ListOus {
                base: Some(s.dn("OU=Nope")),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code, OpErrorCode::NotFound, "{e:?}");
        let e = dir
            .execute(Operation::ListOus {
                base: Some("DC=elsewhere,DC=invalid".into()),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code, OpErrorCode::NotFound, "{e:?}");
    }
}

#[tokio::test]
async fn fail_over_and_tls() {
    for s in both() {
        // a dead first URL: the next one answers
        let dir = Directory::new(&s.config_with(&["ldap://127.0.0.1:1", &s.url], "")).unwrap();
        assert!(lookup(&dir, "alice", &[]).await.is_some());
        assert_eq!(dir.last_url().as_deref(), Some(s.url.as_str()));

        let ca = format!("ca_file = {:?}", s.ca);
        // LDAPS with the CA file
        let dir = Directory::new(&s.config_with(&[&s.tls_url], &ca)).unwrap();
        assert!(lookup(&dir, "alice", &[]).await.is_some());
        assert_eq!(
            verify(&dir, "alice", "Passw0rd!alice").await.0,
            PasswordVerdict::Valid
        );
        // StartTLS with the CA file
        let dir =
            Directory::new(&s.config_with(&[&s.url], &format!("{ca}\nstarttls = true"))).unwrap();
        assert!(lookup(&dir, "alice", &[]).await.is_some());

        // a CA that did not sign the server's certificate
        let other = match s.kind {
            Kind::OpenLdap => var("TEST_SAMBA_CA"),
            Kind::Samba => var("TEST_OPENLDAP_CA"),
        };
        if let Some(other) = other {
            let dir =
                Directory::new(&s.config_with(&[&s.tls_url], &format!("ca_file = {other:?}")))
                    .unwrap();
            let e = dir.execute(Operation::RootDse).await.unwrap_err();
            assert_eq!(e.code, OpErrorCode::DirectoryUnavailable);
            assert!(e.message.contains("certificate"), "{}", e.message);
        }
    }
}

#[tokio::test]
async fn check_report() {
    for s in both() {
        let r = imd::connector::directory::check(&s.config_with(&[&s.url], ""))
            .await
            .unwrap();
        assert!(r.contains(&s.url), "{r}");
        assert!(r.contains("paged results:       supported"), "{r}");
        assert!(r.contains("users (first page):  100+"), "{r}");
        if s.kind == Kind::Samba {
            assert!(r.contains("NetBIOS EXAMPLE / DNS example.test"), "{r}");
        }
    }
}
