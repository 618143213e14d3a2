//! The Graph client's directory sync reads (group members, filtered users, users delta) against
//! the Graph stand-in (tests/graph-standin): paging by nextLink, the advanced-query header on
//! every page, delta rounds with changes and removals, every expired-token shape, and links to
//! anywhere but graph_url refused.

use std::collections::BTreeSet;
use std::time::Duration;

use graph_standin::{DeltaExpiry, StandIn, Tenant};
use imd::directory::graph::{
    DeltaPage, GraphClient, GraphError, GraphSettings, GraphUser, Removed, odata_string,
};
use serde_json::json;
use tokio::time::Instant;

const EXT: &str = "extension_b7d8e3f1a2c44e6f9d0a1b2c3d4e5f60_costCenter";

fn client(s: &StandIn) -> GraphClient {
    GraphClient::new(
        GraphSettings {
            tenant_id: s.tenant_id.clone(),
            client_id: s.client_id.clone(),
            client_secret: s.client_secret.clone(),
            authority_url: s.authority_url.clone(),
            graph_url: s.graph_url.clone(),
        },
        reqwest::Client::new(),
    )
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(10)
}

fn ext() -> Vec<String> {
    vec![EXT.to_string()]
}

fn id(upn: &str) -> String {
    Tenant::fixture().user_id(upn).unwrap()
}

fn ids(users: &[GraphUser]) -> BTreeSet<String> {
    users.iter().map(|u| u.id.clone()).collect()
}

fn find<'a>(users: &'a [GraphUser], upn: &str) -> &'a GraphUser {
    let id = id(upn);
    users.iter().find(|u| u.id == id).expect(upn)
}

/// The recorded requests of one stand-in route.
fn requests(s: &StandIn, route: &str) -> Vec<graph_standin::Recorded> {
    s.requests()
        .into_iter()
        .filter(|r| r.route == route)
        .collect()
}

#[tokio::test]
async fn graph_sync_group_members_over_several_pages() {
    let s = StandIn::start(Tenant::fixture()).await;
    let c = client(&s);
    let all_staff = Tenant::fixture().group_id("All Staff").unwrap();
    // Pages of 3 even though the client asks for $top=999.
    s.set_max_page_size("transitiveMembers", 3);

    let mut users = Vec::new();
    let mut next: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = c
            .group_members_page(&all_staff, &ext(), next.as_deref(), soon())
            .await
            .unwrap();
        pages += 1;
        assert!(page.users.len() <= 3);
        users.extend(page.users);
        match page.next_link {
            Some(n) => next = Some(n),
            None => break,
        }
    }
    // Nested: Engineering (Backend, Frontend) and Sales, plus henrik and carla; groups dropped.
    let expected: BTreeSet<String> = [
        "AdeleV@contoso.test",
        "frank@contoso.test",
        "nora.nomail@contoso.test",
        "dev#ops@contoso.test",
        "sam@contoso.test",
        "dave.disabled@contoso.test",
        "zoë@contoso.test",
        "o'neil@contoso.test",
        "henrik@contoso.test",
        "carla@contoso.test",
    ]
    .into_iter()
    .map(id)
    .collect();
    assert_eq!(ids(&users), expected);
    assert_eq!(users.len(), 10);
    assert_eq!(pages, 4);
    let adele = find(&users, "AdeleV@contoso.test");
    assert_eq!(
        adele.extensions.get(EXT).map(String::as_str),
        Some("CC-4711")
    );
    assert_eq!(adele.department.as_deref(), Some("Engineering"));
    assert!(adele.account_enabled);
    assert!(!find(&users, "dave.disabled@contoso.test").account_enabled);

    // First request: the cast, $select with id and the extension, $top=999; every page an
    // advanced query; nextLinks called as given (nothing added).
    let reqs = requests(&s, "transitiveMembers");
    assert_eq!(reqs.len(), 4);
    assert_eq!(
        reqs[0].path,
        format!("/v1.0/groups/{all_staff}/transitiveMembers/microsoft.graph.user")
    );
    let select = reqs[0].query_param("$select").unwrap();
    assert!(select.starts_with("id,"), "{select}");
    assert!(select.split(',').any(|p| p == EXT), "{select}");
    assert_eq!(reqs[0].query_param("$top").as_deref(), Some("999"));
    assert_eq!(reqs[0].query_param("$count").as_deref(), Some("true"));
    for r in &reqs {
        assert_eq!(
            r.header("consistencylevel"),
            Some("eventual"),
            "{}",
            r.query
        );
    }
    for r in &reqs[1..] {
        assert!(r.query_param("$select").is_none(), "{}", r.query);
        assert!(r.query_param("$skiptoken").is_some(), "{}", r.query);
    }

    // A group that does not exist is an error, not an empty page; a non-GUID never leaves.
    let e = c
        .group_members_page("00000000-0000-4000-8000-000000000000", &[], None, soon())
        .await
        .unwrap_err();
    assert!(
        matches!(e, GraphError::BadRequest(ref m) if m.contains("does not exist")),
        "{e:?}"
    );
    let before = s.graph_calls();
    let e = c
        .group_members_page("Sales", &[], None, soon())
        .await
        .unwrap_err();
    assert!(matches!(e, GraphError::BadRequest(_)), "{e:?}");
    assert_eq!(s.graph_calls(), before);
}

#[tokio::test]
async fn graph_sync_users_page_with_filter() {
    let s = StandIn::start(Tenant::fixture()).await;
    let c = client(&s);
    s.set_max_page_size("users", 2);

    let filter = format!("department eq {}", odata_string("Sales"));
    let first = c
        .users_page(Some(&filter), &ext(), None, soon())
        .await
        .unwrap();
    assert_eq!(first.users.len(), 2);
    let next = first.next_link.clone().expect("a second page");
    let second = c
        .users_page(Some(&filter), &ext(), Some(&next), soon())
        .await
        .unwrap();
    assert!(second.next_link.is_none());
    let users: Vec<GraphUser> = first.users.into_iter().chain(second.users).collect();
    assert_eq!(
        ids(&users),
        [
            "sam@contoso.test",
            "dave.disabled@contoso.test",
            "zoë@contoso.test"
        ]
        .into_iter()
        .map(id)
        .collect()
    );
    let reqs = requests(&s, "users");
    assert_eq!(
        reqs[0].query_param("$filter").as_deref(),
        Some("department eq 'Sales'")
    );
    assert_eq!(reqs[0].query_param("$count").as_deref(), Some("true"));
    // The header goes with the nextLink too (the stand-in refuses the page without it).
    assert!(
        reqs.iter()
            .all(|r| r.header("consistencylevel") == Some("eventual"))
    );

    // A filter only an advanced query may use, and a literal with a quote.
    let page = c
        .users_page(
            Some("onPremisesSamAccountName eq 'henrik'"),
            &[],
            None,
            soon(),
        )
        .await
        .unwrap();
    assert_eq!(ids(&page.users), [id("henrik@contoso.test")].into());
    let page = c
        .users_page(
            Some(&format!("department eq {}", odata_string("R'n'D"))),
            &[],
            None,
            soon(),
        )
        .await
        .unwrap();
    assert_eq!(ids(&page.users), [id("o'neil@contoso.test")].into());

    // No filter: every user, a plain query.
    s.set_max_page_size("users", 999);
    s.reset_calls();
    let page = c.users_page(None, &[], None, soon()).await.unwrap();
    assert_eq!(page.users.len(), Tenant::fixture().user_count());
    assert!(page.next_link.is_none());
    let r = &requests(&s, "users")[0];
    assert!(r.header("consistencylevel").is_none());
    assert!(r.query_param("$filter").is_none());
    assert_eq!(r.query_param("$top").as_deref(), Some("999"));

    // A filter Graph refuses is a BadRequest naming Graph's code.
    let e = c
        .users_page(Some("department eq"), &[], None, soon())
        .await
        .unwrap_err();
    assert!(matches!(e, GraphError::BadRequest(_)), "{e:?}");
}

/// Pages of a round from `link` until its deltaLink.
async fn round(c: &GraphClient, link: &str) -> (Vec<DeltaPage>, String) {
    let mut pages = Vec::new();
    let mut link = link.to_string();
    loop {
        let page = c.delta_page(&link, soon()).await.unwrap();
        assert!(page.next_link.is_none() || page.delta_link.is_none());
        let next = page.next_link.clone();
        let delta = page.delta_link.clone();
        pages.push(page);
        match (next, delta) {
            (Some(n), _) => link = n,
            (None, Some(d)) => return (pages, d),
            (None, None) => unreachable!("delta_page refuses such a page"),
        }
    }
}

#[tokio::test]
async fn graph_sync_delta_rounds_show_changes_and_removals() {
    let s = StandIn::start(Tenant::fixture()).await;
    let c = client(&s);

    // From nothing: a link "from now"; nothing changed since.
    let link = c.delta_latest(&ext(), soon()).await.unwrap();
    assert!(link.starts_with(&format!("{}/v1.0/users/delta?", s.graph_url)));
    let latest = &requests(&s, "delta")[0];
    assert_eq!(latest.query_param("$deltatoken").as_deref(), Some("latest"));
    let select = latest.query_param("$select").unwrap();
    assert!(
        select.starts_with("id,") && select.contains(EXT),
        "{select}"
    );
    let (pages, link) = round(&c, &link).await;
    assert_eq!(pages.len(), 1);
    assert!(pages[0].users.is_empty() && pages[0].removed.is_empty());

    // Disable one user, edit another, soft-delete one and delete one for good.
    s.set_user_enabled("AdeleV@contoso.test", false);
    s.update_user("nora.nomail@contoso.test", json!({"department": "Sales"}));
    s.delete_user("sam@contoso.test", false);
    s.delete_user("frank@contoso.test", true);
    let (pages, link) = round(&c, &link).await;
    let users: Vec<GraphUser> = pages.iter().flat_map(|p| p.users.clone()).collect();
    let mut removed: Vec<Removed> = pages.iter().flat_map(|p| p.removed.clone()).collect();
    removed.sort_by(|a, b| a.reason.cmp(&b.reason));
    assert_eq!(
        ids(&users),
        [id("AdeleV@contoso.test"), id("nora.nomail@contoso.test")].into()
    );
    let adele = find(&users, "AdeleV@contoso.test");
    assert!(!adele.account_enabled);
    assert_eq!(adele.user_principal_name, "AdeleV@contoso.test");
    // The extension was selected in the first request: it is in the token, and so here.
    assert_eq!(
        adele.extensions.get(EXT).map(String::as_str),
        Some("CC-4711")
    );
    let nora = find(&users, "nora.nomail@contoso.test");
    assert_eq!(nora.department.as_deref(), Some("Sales"));
    assert!(nora.account_enabled);
    assert_eq!(
        removed,
        vec![
            Removed {
                id: id("sam@contoso.test"),
                reason: "changed".into()
            },
            Removed {
                id: id("frank@contoso.test"),
                reason: "deleted".into()
            },
        ]
    );

    // A round over several pages; links are called as given (no $select added).
    s.set_page_size("delta", 1);
    s.set_user_enabled("AdeleV@contoso.test", true);
    s.set_user_enabled("dave.disabled@contoso.test", true);
    s.delete_user("carla@contoso.test", false);
    s.reset_calls();
    let (pages, _) = round(&c, &link).await;
    assert_eq!(pages.len(), 3);
    let users: Vec<GraphUser> = pages.iter().flat_map(|p| p.users.clone()).collect();
    assert!(users.iter().all(|u| u.account_enabled));
    assert_eq!(
        ids(&users),
        [id("AdeleV@contoso.test"), id("dave.disabled@contoso.test")].into()
    );
    assert_eq!(pages.iter().map(|p| p.removed.len()).sum::<usize>(), 1);
    let reqs = requests(&s, "delta");
    assert_eq!(reqs.len(), 3);
    assert!(reqs.iter().all(|r| r.query_param("$select").is_none()));
    assert!(reqs.iter().all(|r| r.header("consistencylevel").is_none()));
}

#[tokio::test]
async fn graph_sync_every_expired_delta_shape_is_delta_expired() {
    let s = StandIn::start(Tenant::fixture()).await;
    let c = client(&s);
    for how in [
        DeltaExpiry::BadRequestSyncStateNotFound,
        DeltaExpiry::GoneSyncStateNotFound,
        DeltaExpiry::GoneReset,
        DeltaExpiry::ResyncRequired,
    ] {
        let link = c.delta_latest(&[], soon()).await.unwrap();
        s.expire_delta_tokens(how);
        let e = c.delta_page(&link, soon()).await.unwrap_err();
        assert!(matches!(e, GraphError::DeltaExpired(_)), "{how:?}: {e:?}");
        assert!(!e.is_retryable(), "{how:?}");
    }

    // A nextLink in the middle of a round expires the same way.
    s.set_user_enabled("AdeleV@contoso.test", false);
    let link = c.delta_latest(&[], soon()).await.unwrap();
    s.set_page_size("delta", 1);
    s.set_user_enabled("AdeleV@contoso.test", true);
    s.set_user_enabled("dave.disabled@contoso.test", true);
    let page = c.delta_page(&link, soon()).await.unwrap();
    let next = page.next_link.expect("a second page");
    s.expire_delta_tokens(DeltaExpiry::GoneSyncStateNotFound);
    let e = c.delta_page(&next, soon()).await.unwrap_err();
    assert!(
        matches!(e, GraphError::DeltaExpired(ref m) if m.contains("410") && m.contains("syncStateNotFound")),
        "{e:?}"
    );

    // The same codes outside delta stay what they were (only delta maps them).
    s.fail("users", 410, 1);
    let e = c.users_page(None, &[], None, soon()).await.unwrap_err();
    assert!(matches!(e, GraphError::BadRequest(_)), "{e:?}");
}

#[tokio::test]
async fn graph_sync_links_outside_graph_url_are_refused() {
    let s = StandIn::start(Tenant::fixture()).await;
    // Another server that would happily answer: it must never see a request (or the token).
    let other = StandIn::start(Tenant::fixture()).await;
    let c = client(&s);
    let good = c.delta_latest(&[], soon()).await.unwrap();
    let query = good.split_once('?').unwrap().1.to_string();
    let host_port = s.graph_url.trim_start_matches("http://").to_string();
    let port: u16 = host_port.rsplit_once(':').unwrap().1.parse().unwrap();
    let bad = [
        format!("{}/v1.0/users/delta?{query}", other.graph_url),
        format!("https://{host_port}/v1.0/users/delta?{query}"),
        format!("http://localhost:{port}/v1.0/users/delta?{query}"),
        format!("http://evil.example/v1.0/users/delta?{query}"),
        format!("http://user:pw@{host_port}/v1.0/users/delta?{query}"),
        format!("{}/beta/users/delta?{query}", s.graph_url),
        format!("{}/v1.0x/users/delta?{query}", s.graph_url),
        format!("{}/v1.0/../beta/users/delta?{query}", s.graph_url),
        format!("{}/v1.0/%2e%2e/beta/users/delta?{query}", s.graph_url),
        "/v1.0/users/delta".to_string(),
        "not a url".to_string(),
    ];
    s.reset_calls();
    for link in &bad {
        let e = c.delta_page(link, soon()).await.unwrap_err();
        assert!(
            matches!(e, GraphError::BadRequest(ref m) if m.contains("not followed")),
            "{link}: {e:?}"
        );
        assert!(!e.is_retryable());
    }
    let group = Tenant::fixture().group_id("Sales").unwrap();
    let e = c
        .group_members_page(&group, &[], Some(&bad[0]), soon())
        .await
        .unwrap_err();
    assert!(matches!(e, GraphError::BadRequest(_)), "{e:?}");
    let e = c
        .users_page(None, &[], Some(&bad[0]), soon())
        .await
        .unwrap_err();
    assert!(matches!(e, GraphError::BadRequest(_)), "{e:?}");
    assert_eq!(other.calls("*"), 0);
    assert_eq!(s.graph_calls(), 0);

    // The good link still works.
    let page = c.delta_page(&good, soon()).await.unwrap();
    assert!(page.delta_link.is_some());
}
