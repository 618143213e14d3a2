//! Wire-shape tests for the Graph stand-in, driven over real HTTP with reqwest.

use std::time::{Duration, Instant};

use graph_standin::{DeltaExpiry, StandIn, Tenant};
use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};

const ADELE: &str = "ab3427e0-5bcd-498b-a10f-c473aea72967";

fn client() -> Client {
    Client::builder().build().unwrap()
}

/// `application/x-www-form-urlencoded` body, encoded once.
trait FormExt {
    fn form_pairs<K: AsRef<str>, V: AsRef<str>>(self, pairs: &[(K, V)]) -> Self;
}

impl FormExt for reqwest::RequestBuilder {
    fn form_pairs<K: AsRef<str>, V: AsRef<str>>(self, pairs: &[(K, V)]) -> Self {
        let mut ser = form_urlencoded::Serializer::new(String::new());
        for (k, v) in pairs {
            ser.append_pair(k.as_ref(), v.as_ref());
        }
        self.header("Content-Type", "application/x-www-form-urlencoded")
            .body(ser.finish())
    }
}

async fn token_response(s: &StandIn, form: &[(&str, &str)]) -> Response {
    client()
        .post(format!(
            "{}/{}/oauth2/v2.0/token",
            s.authority_url, s.tenant_id
        ))
        .form_pairs(form)
        .send()
        .await
        .unwrap()
}

async fn token(s: &StandIn) -> String {
    let scope = format!("{}/.default", s.graph_url);
    let r = token_response(
        s,
        &[
            ("client_id", &s.client_id),
            ("scope", &scope),
            ("client_secret", &s.client_secret),
            ("grant_type", "client_credentials"),
        ],
    )
    .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    v["access_token"].as_str().unwrap().to_owned()
}

async fn get(s: &StandIn, tok: &str, path_and_query: &str) -> (StatusCode, Value) {
    get_with(s, tok, path_and_query, &[]).await
}

async fn get_with(
    s: &StandIn,
    tok: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, Value) {
    let url = if path_and_query.starts_with("http") {
        path_and_query.to_owned()
    } else {
        format!("{}{path_and_query}", s.graph_url)
    };
    let mut rb = client().get(url).bearer_auth(tok);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let r = rb.send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn aad_error(v: &Value, error: &str, code: u64) {
    assert_eq!(v["error"], error, "{v}");
    assert_eq!(v["error_codes"], json!([code]), "{v}");
    let d = v["error_description"].as_str().unwrap();
    assert!(d.starts_with(&format!("AADSTS{code}: ")), "{d}");
    assert!(
        d.contains("\r\nTrace ID: ")
            && d.contains("\r\nCorrelation ID: ")
            && d.contains("\r\nTimestamp: "),
        "{d}"
    );
    let ts = v["timestamp"].as_str().unwrap();
    assert_eq!(ts.len(), 20, "{ts}");
    assert_eq!(&ts[10..11], " ");
    assert!(ts.ends_with('Z'));
    assert!(d.ends_with(ts));
    assert!(uuid_like(v["trace_id"].as_str().unwrap()));
    assert!(uuid_like(v["correlation_id"].as_str().unwrap()));
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|c| *c == '-').count() == 4
}

fn graph_error(v: &Value, code: &str) {
    assert_eq!(v["error"]["code"], code, "{v}");
    let inner = &v["error"]["innerError"];
    let date = inner["date"].as_str().unwrap();
    assert_eq!(date.len(), 19, "{date}");
    assert_eq!(&date[10..11], "T");
    assert!(uuid_like(inner["request-id"].as_str().unwrap()));
    assert!(inner["client-request-id"].is_string());
}

#[tokio::test]
async fn token_success_carries_roles() {
    let s = StandIn::start(Tenant::fixture()).await;
    s.set_token_lifetime_secs(120);
    let scope = format!("{}/.default", s.graph_url);
    let r = token_response(
        &s,
        &[
            ("client_id", &s.client_id),
            ("scope", &scope),
            ("client_secret", &s.client_secret),
            ("grant_type", "client_credentials"),
        ],
    )
    .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["expires_in"], 120);
    assert_eq!(v["ext_expires_in"], 120);
    let tok = v["access_token"].as_str().unwrap();
    assert!(tok.starts_with("eyJ"));
    use base64::Engine;
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(tok.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        claims["roles"],
        json!(["User.Read.All", "GroupMember.Read.All"])
    );
    assert_eq!(claims["tid"], s.tenant_id);
    assert_eq!(s.calls("token"), 1);
    // The secret contains '+' and '/': Basic client authentication works too.
    let basic = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        s.client_id,
        s.client_secret
            .replace('+', "%2B")
            .replace('/', "%2F")
            .replace('=', "%3D")
    ));
    let r = client()
        .post(format!(
            "{}/contoso.test/oauth2/v2.0/token",
            s.authority_url
        ))
        .header("Authorization", format!("Basic {basic}"))
        .form_pairs(&[
            ("scope", scope.as_str()),
            ("grant_type", "client_credentials"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn token_errors() {
    let s = StandIn::start(Tenant::fixture()).await;
    let scope = format!("{}/.default", s.graph_url);
    let good = [
        ("client_id", s.client_id.as_str()),
        ("scope", scope.as_str()),
        ("client_secret", s.client_secret.as_str()),
        ("grant_type", "client_credentials"),
    ];
    let post = |tenant: String, form: Vec<(&'static str, String)>| {
        let url = format!("{}/{tenant}/oauth2/v2.0/token", s.authority_url);
        async move {
            let r = client().post(url).form_pairs(&form).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let form = |over: &[(&'static str, &str)], drop: &str| -> Vec<(&'static str, String)> {
        good.iter()
            .filter(|(k, _)| *k != drop)
            .map(|(k, v)| {
                let v = over
                    .iter()
                    .find(|(ok, _)| ok == k)
                    .map_or(*v, |(_, ov)| *ov);
                (*k, v.to_owned())
            })
            .collect()
    };

    let (st, v) = post("00000000-0000-0000-0000-000000000001".into(), form(&[], "")).await;
    assert_eq!(st, 400);
    aad_error(&v, "invalid_tenant", 90002);
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .contains("Tenant '00000000-0000-0000-0000-000000000001' not found")
    );

    let (st, v) = post(
        s.tenant_id.clone(),
        form(&[("client_id", "11111111-1111-1111-1111-111111111111")], ""),
    )
    .await;
    assert_eq!(st, 400);
    aad_error(&v, "unauthorized_client", 700016);

    let (st, v) = post(s.tenant_id.clone(), form(&[("client_secret", "wrong")], "")).await;
    assert_eq!(st, 401);
    aad_error(&v, "invalid_client", 7000215);

    // A raw '+' in the body decodes to a space: a client that forgets to encode the secret
    // gets "invalid secret".
    let raw = format!(
        "client_id={}&scope={}&client_secret={}&grant_type=client_credentials",
        s.client_id, scope, s.client_secret
    );
    let r = client()
        .post(format!(
            "{}/{}/oauth2/v2.0/token",
            s.authority_url, s.tenant_id
        ))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(raw)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let (st, v) = post(
        s.tenant_id.clone(),
        form(
            &[("scope", "https://graph.microsoft.com/User.Read.All")],
            "",
        ),
    )
    .await;
    assert_eq!(st, 400);
    aad_error(&v, "invalid_scope", 1002012);

    let (st, v) = post(s.tenant_id.clone(), form(&[], "client_secret")).await;
    assert_eq!(st, 400);
    aad_error(&v, "invalid_request", 900144);
    assert!(
        v["error_description"]
            .as_str()
            .unwrap()
            .contains("'client_secret'")
    );

    s.set_secret_expired(true);
    let (st, v) = post(s.tenant_id.clone(), form(&[], "")).await;
    assert_eq!(st, 401);
    aad_error(&v, "invalid_client", 7000222);
    s.set_secret_expired(false);
    let (st, _) = post("contoso.test".into(), form(&[], "")).await;
    assert_eq!(st, 200);
}

#[tokio::test]
async fn user_lookup_keys() {
    let s = StandIn::start(Tenant::fixture()).await;
    let t = token(&s).await;
    let sel = "$select=id,userPrincipalName";
    for (path, upn) in [
        ("/v1.0/users/dev%23ops@contoso.test", "dev#ops@contoso.test"),
        (
            "/v1.0/users/alex_fabrikam.test%23EXT%23@contoso.onmicrosoft.com",
            "alex_fabrikam.test#EXT#@contoso.onmicrosoft.com",
        ),
        ("/v1.0/users/adelev@CONTOSO.test", "AdeleV@contoso.test"),
        ("/v1.0/users/zo%C3%AB@contoso.test", "zoë@contoso.test"),
        (
            "/v1.0/users/erin+test@contoso.test",
            "erin+test@contoso.test",
        ),
        ("/v1.0/users('o''neil@contoso.test')", "o'neil@contoso.test"),
        ("/v1.0/users('$kiosk@contoso.test')", "$kiosk@contoso.test"),
        (
            "/v1.0/users/AB3427E0-5BCD-498B-A10F-C473AEA72967",
            "AdeleV@contoso.test",
        ),
    ] {
        let (st, v) = get(&s, &t, &format!("{path}?{sel}")).await;
        assert_eq!(st, 200, "{path}: {v}");
        assert_eq!(v["userPrincipalName"], upn, "{path}");
    }
    // '#' unencoded is a fragment: the server only sees "dev".
    let (st, v) = get(&s, &t, "/v1.0/users/dev#ops@contoso.test").await;
    assert_eq!(st, 404);
    graph_error(&v, "Request_ResourceNotFound");
    assert_eq!(
        v["error"]["message"],
        "Resource 'dev' does not exist or one of its queried reference-property objects are not present."
    );
    let (st, v) = get(&s, &t, "/v1.0/users/$kiosk@contoso.test").await;
    assert_eq!(st, 400, "{v}");
    graph_error(&v, "Request_BadRequest");
}

#[tokio::test]
async fn select_projection_and_headers() {
    let s = StandIn::start(Tenant::fixture()).await;
    let t = token(&s).await;
    let r = client()
        .get(format!("{}/v1.0/users/{ADELE}", s.graph_url))
        .bearer_auth(&t)
        .header("client-request-id", "5f9b1d7e-1111-4222-8333-444455556666")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["client-request-id"],
        "5f9b1d7e-1111-4222-8333-444455556666"
    );
    assert!(uuid_like(r.headers()["request-id"].to_str().unwrap()));
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json;odata.metadata=minimal")
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["@odata.context"],
        format!("{}/v1.0/$metadata#users/$entity", s.graph_url)
    );
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    for k in [
        "businessPhones",
        "displayName",
        "givenName",
        "id",
        "jobTitle",
        "mail",
        "mobilePhone",
        "officeLocation",
        "preferredLanguage",
        "surname",
        "userPrincipalName",
    ] {
        assert!(keys.contains(&k), "{k} missing: {keys:?}");
    }
    assert!(v.get("accountEnabled").is_none() && v.get("department").is_none());

    let (st, v) = get(&s, &t, "/v1.0/users/nora.nomail@contoso.test?$select=mail,accountEnabled,onPremisesImmutableId,department").await;
    assert_eq!(st, 200);
    assert_eq!(
        v,
        json!({
            "@odata.context": format!("{}/v1.0/$metadata#users(mail,accountEnabled,onPremisesImmutableId,department)/$entity", s.graph_url),
            "mail": null, "accountEnabled": true, "onPremisesImmutableId": null, "department": "Engineering"
        })
    );
    let (_, v) = get(&s, &t, "/v1.0/users/henrik@contoso.test?$select=id,onPremisesImmutableId,extension_b7d8e3f1a2c44e6f9d0a1b2c3d4e5f60_costCenter").await;
    assert_eq!(v["onPremisesImmutableId"], "4AQlP4lP0xGaDAMF6CwzAQ==");
    assert_eq!(
        v["extension_b7d8e3f1a2c44e6f9d0a1b2c3d4e5f60_costCenter"],
        Value::Null
    );
    let (st, v) = get(&s, &t, "/v1.0/users/henrik@contoso.test?$select=id,bogus").await;
    assert_eq!(st, 400);
    graph_error(&v, "Request_BadRequest");

    let rec = s.requests();
    let first = rec.iter().find(|r| r.route == "user").unwrap();
    assert_eq!(
        first.header("Client-Request-Id"),
        Some("5f9b1d7e-1111-4222-8333-444455556666")
    );
    assert_eq!(
        rec[2].query_param("$select").as_deref(),
        Some("mail,accountEnabled,onPremisesImmutableId,department")
    );
}

#[tokio::test]
async fn filters_and_advanced_queries() {
    let s = StandIn::start(Tenant::fixture()).await;
    let t = token(&s).await;
    let (st, v) = get(
        &s,
        &t,
        "/v1.0/users?$filter=department%20eq%20'R''n''D'&$select=id,userPrincipalName",
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v["value"],
        json!([{"id": "9e2f43b2-b2bc-49e6-b833-62e6130a915d", "userPrincipalName": "o'neil@contoso.test"}])
    );
    assert!(v.get("@odata.count").is_none());

    let (_, v) = get(&s, &t, "/v1.0/users?$filter=department in ('Sales','IT') and startsWith(displayName,'S')&$select=userPrincipalName").await;
    assert_eq!(
        v["value"],
        json!([{"userPrincipalName": "sam@contoso.test"}])
    );

    // companyName eq is advanced: needs ConsistencyLevel + $count=true.
    let q = "/v1.0/users?$filter=companyName eq 'Contoso Ltd'&$select=id&$count=true";
    let (st, v) = get(&s, &t, q).await;
    assert_eq!(st, 400);
    graph_error(&v, "Request_UnsupportedQuery");
    let (st, v) = get_with(
        &s,
        &t,
        "/v1.0/users?$filter=companyName eq 'Contoso Ltd'&$select=id",
        &[("ConsistencyLevel", "eventual")],
    )
    .await;
    assert_eq!(st, 400, "{v}");
    let (st, v) = get_with(&s, &t, q, &[("ConsistencyLevel", "eventual")]).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["@odata.count"], 2);
    let (st, v) = get_with(
        &s,
        &t,
        "/v1.0/users?$filter=extension_b7d8e3f1a2c44e6f9d0a1b2c3d4e5f60_costCenter eq 'CC-4711'&$count=true&$select=id",
        &[("ConsistencyLevel", "eventual")],
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["value"], json!([{"id": ADELE}]));

    // groups: startsWith by default, $search only with the header.
    let (st, v) = get(
        &s,
        &t,
        "/v1.0/groups?$filter=startsWith(displayName,'eng')&$select=id,displayName",
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(v["value"][0]["displayName"], "Engineering");
    let (st, v) = get(&s, &t, "/v1.0/groups?$search=\"displayName:admins\"").await;
    assert_eq!(st, 400);
    graph_error(&v, "Request_UnsupportedQuery");
    let (st, v) = get_with(
        &s,
        &t,
        "/v1.0/groups?$search=\"displayName:admins\"&$select=displayName",
        &[("ConsistencyLevel", "eventual")],
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(v["value"], json!([{"displayName": "Helpdesk Admins"}]));
}

#[tokio::test]
async fn paging_with_next_links() {
    let s = StandIn::start(Tenant::fixture().with_bulk_users(250)).await;
    let t = token(&s).await;
    let mut url = format!("{}/v1.0/users?$select=id&$top=100", s.graph_url);
    let mut seen = 0;
    let mut pages = 0;
    loop {
        let (st, v) = get(&s, &t, &url).await;
        assert_eq!(st, 200, "{v}");
        seen += v["value"].as_array().unwrap().len();
        pages += 1;
        match v["@odata.nextLink"].as_str() {
            Some(next) => {
                assert!(
                    next.starts_with(&format!("{}/v1.0/users?", s.graph_url)),
                    "{next}"
                );
                assert!(next.contains("$skiptoken="));
                url = next.to_owned();
            }
            None => break,
        }
    }
    assert_eq!(seen, 265);
    assert_eq!(pages, 3);

    // An advanced query's nextLink must carry ConsistencyLevel again.
    let h = [("ConsistencyLevel", "eventual")];
    let (st, v) = get_with(
        &s,
        &t,
        "/v1.0/users?$filter=employeeType eq 'Contractor'&$count=true&$select=id&$top=50",
        &h,
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["@odata.count"], 126);
    let next = v["@odata.nextLink"].as_str().unwrap().to_owned();
    let (st, v) = get(&s, &t, &next).await;
    assert_eq!(st, 400);
    graph_error(&v, "Request_UnsupportedQuery");
    let (st, v) = get_with(&s, &t, &next, &h).await;
    assert_eq!(st, 200);
    assert!(v.get("@odata.count").is_none());
    let last = s.requests().into_iter().last().unwrap();
    assert_eq!(last.header("consistencylevel"), Some("eventual"));

    // transitiveMemberOf pages too when the default page size is small.
    s.set_page_size("transitiveMemberOf", 2);
    let (_, v) = get(&s, &t, &format!("/v1.0/users/{ADELE}/transitiveMemberOf")).await;
    assert_eq!(v["value"].as_array().unwrap().len(), 2);
    let (_, v2) = get(&s, &t, v["@odata.nextLink"].as_str().unwrap()).await;
    assert_eq!(v2["value"].as_array().unwrap().len(), 2);
    assert!(v2.get("@odata.nextLink").is_none());

    // A cap pages below an explicit $top (server-side paging).
    s.set_max_page_size("transitiveMemberOf", 3);
    let (_, v) = get(
        &s,
        &t,
        &format!("/v1.0/users/{ADELE}/transitiveMemberOf?$top=999"),
    )
    .await;
    assert_eq!(v["value"].as_array().unwrap().len(), 3);
    let (_, v2) = get(&s, &t, v["@odata.nextLink"].as_str().unwrap()).await;
    assert_eq!(v2["value"].as_array().unwrap().len(), 1);
    assert!(v2.get("@odata.nextLink").is_none());
}

#[tokio::test]
async fn memberships() {
    let s = StandIn::start(Tenant::fixture()).await;
    let t = token(&s).await;
    let (st, v) = get(
        &s,
        &t,
        &format!("/v1.0/users/{ADELE}/transitiveMemberOf?$select=id,displayName"),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(
        v["@odata.context"],
        format!(
            "{}/v1.0/$metadata#directoryObjects(id,displayName)",
            s.graph_url
        )
    );
    let names: Vec<&str> = v["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["displayName"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["Backend", "Project Falcon", "Engineering", "All Staff"]
    );
    assert_eq!(v["value"][0]["@odata.type"], "#microsoft.graph.group");

    // Henrik: a directory role besides groups; the cast keeps only groups.
    let (_, v) = get(&s, &t, "/v1.0/users/henrik@contoso.test/transitiveMemberOf").await;
    let types: Vec<&str> = v["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["@odata.type"].as_str().unwrap())
        .collect();
    assert!(
        types.contains(&"#microsoft.graph.directoryRole"),
        "{types:?}"
    );
    let (_, v) = get(
        &s,
        &t,
        "/v1.0/users/henrik@contoso.test/transitiveMemberOf/microsoft.graph.group",
    )
    .await;
    assert_eq!(
        v["@odata.context"],
        format!("{}/v1.0/$metadata#groups", s.graph_url)
    );
    assert!(
        v["value"]
            .as_array()
            .unwrap()
            .iter()
            .all(|g| g["@odata.type"] == "#microsoft.graph.group")
    );
    let helpdesk = v["value"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["displayName"] == "Helpdesk Admins")
        .unwrap();
    assert_eq!(helpdesk["mailEnabled"], true);
    assert_eq!(helpdesk["securityEnabled"], true);
    assert_eq!(helpdesk["groupTypes"], json!([]));

    // A cycle terminates.
    let (_, v) = get(
        &s,
        &t,
        "/v1.0/users/lou.loop@contoso.test/transitiveMemberOf?$select=displayName",
    )
    .await;
    assert_eq!(v["value"].as_array().unwrap().len(), 2);

    let all_staff = Tenant::fixture().group_id("All Staff").unwrap();
    let (st, v) = get(&s, &t, &format!("/v1.0/groups/{all_staff}/transitiveMembers/microsoft.graph.user?$select=userPrincipalName")).await;
    assert_eq!(st, 200);
    assert_eq!(v["value"].as_array().unwrap().len(), 10, "{v}");

    let backend = Tenant::fixture().group_id("Backend").unwrap();
    let r = client()
        .post(format!(
            "{}/v1.0/users/{ADELE}/checkMemberGroups",
            s.graph_url
        ))
        .bearer_auth(&t)
        .json(&json!({"groupIds": [all_staff, "b6a3e298-cc17-47e0-90ff-bbb1219ba3fc", backend]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["value"], json!([all_staff, backend]));
    let r = client()
        .post(format!(
            "{}/v1.0/users/{ADELE}/checkMemberGroups",
            s.graph_url
        ))
        .bearer_auth(&t)
        .json(&json!({"groupIds": vec![all_staff.clone(); 21]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // Only User.Read.All: groups come back with limited information.
    s.set_permissions(&["User.Read.All"]);
    let t2 = token(&s).await;
    let (st, v) = get(
        &s,
        &t2,
        &format!("/v1.0/users/{ADELE}/transitiveMemberOf?$select=id,displayName"),
    )
    .await;
    assert_eq!(st, 200);
    assert!(v["value"][0]["id"].is_string());
    assert!(v["value"][0]["displayName"].is_null());
    let (st, v) = get(
        &s,
        &t2,
        &format!("/v1.0/groups/{all_staff}/transitiveMembers"),
    )
    .await;
    assert_eq!(st, 403);
    graph_error(&v, "Authorization_RequestDenied");
}

#[tokio::test]
async fn throttling_and_failures() {
    let s = StandIn::start(Tenant::fixture()).await;
    let t = token(&s).await;
    s.throttle("user", 2, Some("1"));
    for _ in 0..2 {
        let r = client()
            .get(format!("{}/v1.0/users/{ADELE}", s.graph_url))
            .bearer_auth(&t)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "1");
        assert!(r.headers().contains_key("x-ms-throttle-scope"));
        let v: Value = r.json().await.unwrap();
        graph_error(&v, "TooManyRequests");
        assert_eq!(v["error"]["innerError"]["status"], "429");
    }
    let (st, _) = get(&s, &t, &format!("/v1.0/users/{ADELE}")).await;
    assert_eq!(st, 200);
    assert_eq!(s.calls("user"), 3);

    s.throttle("*", 1, None);
    let r = client()
        .get(format!("{}/v1.0/groups", s.graph_url))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(!r.headers().contains_key("retry-after"));

    s.fail("transitiveMemberOf", 503, 1);
    let (st, v) = get(&s, &t, &format!("/v1.0/users/{ADELE}/transitiveMemberOf")).await;
    assert_eq!(st, 503);
    graph_error(&v, "serviceNotAvailable");

    s.set_delay_ms("user", 300);
    let started = Instant::now();
    let (st, _) = get(&s, &t, &format!("/v1.0/users/{ADELE}")).await;
    assert_eq!(st, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
    s.reset_calls();
    assert_eq!(s.calls("user"), 0);
    assert!(s.requests().is_empty());
}

#[tokio::test]
async fn expired_tokens_and_consent() {
    let s = StandIn::start(Tenant::fixture()).await;
    let t = token(&s).await;
    let (st, _) = get(&s, &t, &format!("/v1.0/users/{ADELE}")).await;
    assert_eq!(st, 200);
    s.expire_tokens();
    let r = client()
        .get(format!("{}/v1.0/users/{ADELE}", s.graph_url))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer realm=\"\"")
    );
    let v: Value = r.json().await.unwrap();
    graph_error(&v, "InvalidAuthenticationToken");
    assert_eq!(
        v["error"]["message"],
        "Access token has expired or is not yet valid."
    );
    let t2 = token(&s).await;
    assert_eq!(get(&s, &t2, &format!("/v1.0/users/{ADELE}")).await.0, 200);

    // A token that really expires.
    s.set_token_lifetime_secs(1);
    let t3 = token(&s).await;
    assert_eq!(get(&s, &t3, &format!("/v1.0/users/{ADELE}")).await.0, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(&s, &t3, &format!("/v1.0/users/{ADELE}")).await.0, 401);

    let (st, v) = get(&s, "garbage", &format!("/v1.0/users/{ADELE}")).await;
    assert_eq!(st, 401);
    graph_error(&v, "InvalidAuthenticationToken");

    // Consent withheld: token still issued, Graph says 403.
    s.set_token_lifetime_secs(3599);
    s.set_permissions(&[]);
    let t4 = token(&s).await;
    let (st, v) = get(&s, &t4, &format!("/v1.0/users/{ADELE}")).await;
    assert_eq!(st, 403);
    graph_error(&v, "Authorization_RequestDenied");
}

#[tokio::test]
async fn delta_rounds() {
    let s = StandIn::start(Tenant::fixture()).await;
    s.set_page_size("delta", 6);
    let t = token(&s).await;
    let mut url = format!(
        "{}/v1.0/users/delta?$select=id,userPrincipalName,accountEnabled",
        s.graph_url
    );
    let mut count = 0;
    let delta_link = loop {
        let (st, v) = get(&s, &t, &url).await;
        assert_eq!(st, 200, "{v}");
        count += v["value"].as_array().unwrap().len();
        assert!(v.get("@odata.nextLink").is_none() || v.get("@odata.deltaLink").is_none());
        if let Some(n) = v["@odata.nextLink"].as_str() {
            url = n.to_owned();
        } else {
            break v["@odata.deltaLink"].as_str().unwrap().to_owned();
        }
    };
    assert_eq!(count, 15);
    assert!(delta_link.contains("$deltatoken="));

    let (_, v) = get(&s, &t, &delta_link).await;
    assert_eq!(v["value"], json!([]));

    s.set_user_enabled("AdeleV@contoso.test", false);
    s.delete_user("gina.nogroups@contoso.test", true);
    let (_, v) = get(&s, &t, &delta_link).await;
    assert_eq!(
        v["value"],
        json!([
            {"id": ADELE, "userPrincipalName": "AdeleV@contoso.test", "accountEnabled": false},
            {"id": "d7e31eae-b033-4f81-8d4a-e2b3b54ab7b3", "@removed": {"reason": "deleted"}},
        ])
    );
    let (st, _) = get(&s, &t, &format!("{delta_link}&$select=id")).await;
    assert_eq!(st, 400);

    let (_, v) = get(&s, &t, "/v1.0/users/delta?$deltatoken=latest").await;
    assert_eq!(v["value"], json!([]));
    assert!(v["@odata.deltaLink"].is_string());

    s.expire_delta_tokens(DeltaExpiry::GoneSyncStateNotFound);
    let (st, v) = get(&s, &t, &delta_link).await;
    assert_eq!(st, 410);
    graph_error(&v, "syncStateNotFound");
    assert_eq!(s.calls("delta"), 8);
}

#[test]
fn bulk_generation_is_fast() {
    let started = Instant::now();
    let t = Tenant::fixture().with_bulk_users(5000);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(t.user_count(), 5015);
    assert_eq!(
        t.user_id("bulk0042@contoso.test").as_deref(),
        Some("b0000000-0000-4000-8000-00000000002a")
    );
    assert!(t.group_id("Bulk Group 9").is_some());
}

#[tokio::test]
async fn stats_endpoint_reports_route_counters_without_counting_itself() {
    let s = StandIn::start(Tenant::fixture()).await;
    let tok = token(&s).await;
    let (status, _) = get(&s, &tok, &format!("/v1.0/users/{ADELE}")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = get(&s, &tok, &format!("/v1.0/users/{ADELE}/transitiveMemberOf")).await;
    assert_eq!(status, StatusCode::OK);
    let read = || async {
        let r = client()
            .get(format!("{}{}", s.graph_url, graph_standin::STATS_PATH))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.json::<Value>().await.unwrap()
    };
    let v = read().await;
    assert_eq!(
        v,
        json!({"calls": {"token": 1, "user": 1, "transitiveMemberOf": 1}, "tokens_issued": 1})
    );
    assert_eq!(read().await, v, "reading the counters is not a call");
    assert_eq!(s.calls("*"), 3);
    assert_eq!(s.requests().len(), 3);
}
