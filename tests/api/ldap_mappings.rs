//! AD/LDAP mappings (CRUD, priority order, validation errors that name the field) and the
//! organization's slug and directory-outage policy.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, error_code, spawn_app};

const PATH: &str = "/api/v1/admin/ldap-mappings";

fn mapping(name: &str, priority: i64) -> Value {
    json!({
        "name": name,
        "priority": priority,
        "base_dn": "DC=corp,DC=example,DC=com",
        "ou": "OU=Sales, DC=corp,DC=example,DC=com",
        "group": "CN=Laptop Users,OU=Groups,DC=corp,DC=example,DC=com",
        "filter": "(department=Sales)",
        "profile": "Laptops",
        "storage_region": "eu-central",
        "quota_bytes": 1000,
        "auto_import": true,
        "email_fallback": "upn"
    })
}

async fn patch(app: &TestApp, path: &str, body: &Value) -> reqwest::Response {
    app.client
        .patch(app.url(path))
        .bearer_auth(&app.admin_key)
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn created(app: &TestApp, body: &Value) -> Value {
    let r = app.admin_post(PATH, body).await;
    let status = r.status();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{v}");
    v
}

/// (status, code, field, message) of a refused write.
async fn refused(r: reqwest::Response) -> (StatusCode, String, Value, String) {
    let (s, c, body) = error_code(r).await;
    let msg = body["error"]["message"].as_str().unwrap().to_string();
    (s, c, body["error"]["field"].clone(), msg)
}

#[tokio::test]
async fn mappings_can_be_created_listed_by_priority_patched_and_deleted() {
    let app = spawn_app().await;
    let a = created(&app, &mapping("sales", 20)).await;
    assert_eq!(a["name"], "sales");
    assert_eq!(
        a["group"],
        "CN=Laptop Users,OU=Groups,DC=corp,DC=example,DC=com"
    );
    assert_eq!(a["filter"], "(department=Sales)");
    assert_eq!(a["email_fallback"], "upn");
    assert_eq!(a["auto_import"], true);
    assert_eq!(a["quota_bytes"], 1000);
    assert!(a.get("org_id").is_none());
    let b = created(
        &app,
        &json!({"name": "everyone", "priority": 100, "base_dn": "dc=corp,dc=example,dc=com",
                "filter": "objectClass=user", "profile": "Default", "storage_region": "eu"}),
    )
    .await;
    // Defaults, and the filter wrapped in its outer parentheses.
    assert_eq!(b["email_fallback"], "none");
    assert_eq!(b["auto_import"], false);
    assert_eq!(b["ou"], Value::Null);
    assert_eq!(b["filter"], "(objectClass=user)");
    created(&app, &{
        let mut m = mapping("first", 0);
        m["ou"] = Value::Null;
        m
    })
    .await;

    let names: Vec<String> = app
        .list(PATH)
        .await
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["first", "sales", "everyone"]);
    let rows = app.store.ldap_mappings(&app.org_id).await.unwrap();
    assert_eq!(
        rows.iter().map(|r| r.priority).collect::<Vec<_>>(),
        [0, 20, 100]
    );

    let id = a["id"].as_str().unwrap();
    let one: Value = app
        .admin_get(&format!("{PATH}/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(one, a);

    // Patch: absent fields stay, null clears, priority moves the order.
    let r = patch(
        &app,
        &format!("{PATH}/{id}"),
        &json!({"priority": 500, "ou": null, "filter": null, "quota_bytes": null, "profile": "Desktops"}),
    )
    .await;
    let status = r.status();
    let p: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{p}");
    assert_eq!(p["priority"], 500);
    assert_eq!(p["ou"], Value::Null);
    assert_eq!(p["filter"], Value::Null);
    assert_eq!(p["quota_bytes"], Value::Null);
    assert_eq!(p["profile"], "Desktops");
    assert_eq!(p["group"], a["group"]);
    assert_eq!(p["storage_region"], "eu-central");
    let names: Vec<String> = app
        .list(PATH)
        .await
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["first", "everyone", "sales"]);

    let r = app.delete_as(&format!("{PATH}/{id}"), &app.admin_key).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.list(PATH).await.len(), 2);
    for r in [
        app.admin_get(&format!("{PATH}/{id}")).await,
        app.delete_as(&format!("{PATH}/{id}"), &app.admin_key).await,
        patch(&app, &format!("{PATH}/{id}"), &json!({"priority": 1})).await,
    ] {
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }

    // Another organization sees none of them.
    let (_, other_key) = app.other_org().await;
    let v: Value = app.get_as(PATH, &other_key).await.json().await.unwrap();
    assert_eq!(v["items"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn equal_priorities_and_names_are_conflicts_naming_the_other_mapping() {
    let app = spawn_app().await;
    let a = created(&app, &mapping("sales", 10)).await;
    let (s, c, field, msg) = refused(app.admin_post(PATH, &mapping("other", 10)).await).await;
    assert_eq!((s, c.as_str()), (StatusCode::CONFLICT, "conflict"));
    assert_eq!(field, "priority");
    assert!(
        msg.contains("\"sales\"") && msg.contains(a["id"].as_str().unwrap()),
        "{msg}"
    );
    let (s, _, field, _) = refused(app.admin_post(PATH, &mapping("sales", 11)).await).await;
    assert_eq!((s, field), (StatusCode::CONFLICT, json!("name")));

    let b = created(&app, &mapping("other", 11)).await;
    let bp = format!("{PATH}/{}", b["id"].as_str().unwrap());
    let (s, _, field, msg) = refused(patch(&app, &bp, &json!({"priority": 10})).await).await;
    assert_eq!((s, field), (StatusCode::CONFLICT, json!("priority")));
    assert!(msg.contains("sales"), "{msg}");
    // Keeping its own priority is not a conflict with itself.
    let r = patch(&app, &bp, &json!({"priority": 11, "name": "other"})).await;
    assert_eq!(r.status(), StatusCode::OK);
    // Another organization may use the same priority.
    let (_, other_key) = app.other_org().await;
    let r = app
        .client
        .post(app.url(PATH))
        .bearer_auth(&other_key)
        .json(&mapping("sales", 10))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn invalid_fields_are_422_naming_the_field_and_the_problem() {
    let app = spawn_app().await;
    let with = |k: &str, v: Value| {
        let mut m = mapping("m", 1);
        m[k] = v;
        m
    };
    for (body, field, want) in [
        (
            with("base_dn", json!("DC=corp,,DC=com")),
            "base_dn",
            "position 9",
        ),
        (with("base_dn", json!("")), "base_dn", "empty"),
        (
            with("base_dn", json!("corp.example.com")),
            "base_dn",
            "expected '='",
        ),
        (
            with("ou", json!("OU=Sales,DC=other,DC=com")),
            "ou",
            "does not lie within base_dn",
        ),
        (
            with("group", json!("CN=G,DC=example,DC=com")),
            "group",
            "does not lie within base_dn",
        ),
        (
            with("group", json!(r"CN=Bad\q,DC=corp,DC=example,DC=com")),
            "group",
            "hex digits",
        ),
        (
            with("filter", json!("(&(department=Sales)")),
            "filter",
            "never closed at position 1",
        ),
        (with("filter", json!("(a=b))")), "filter", "position 6"),
        (with("filter", json!("")), "filter", "empty"),
        (with("filter", json!("(=x)")), "filter", "RFC 4515"),
        (
            with("filter", json!(format!("(cn={})", "a".repeat(4100)))),
            "filter",
            "4096",
        ),
        (
            with("priority", json!(1_000_001)),
            "priority",
            "between 0 and 1000000",
        ),
        (
            with("priority", json!(-1)),
            "priority",
            "between 0 and 1000000",
        ),
        (with("profile", json!(" ")), "profile", "empty"),
        (
            with("storage_region", json!("x".repeat(101))),
            "storage_region",
            "longer than 100",
        ),
        (with("quota_bytes", json!(-5)), "quota_bytes", ">= 0"),
        (
            with("email_fallback", json!("mail")),
            "email_fallback",
            "none",
        ),
        (with("name", json!("")), "name", "empty"),
    ] {
        let (s, c, f, msg) = refused(app.admin_post(PATH, &body).await).await;
        assert_eq!(
            (s, c.as_str(), f.as_str()),
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                "mapping_invalid",
                Some(field)
            ),
            "{body}: {msg}"
        );
        assert!(
            msg.starts_with(&format!("{field}: ")) && msg.contains(want),
            "{field}: {msg}"
        );
    }
    // A patch that moves base_dn away from the OU is refused too.
    let m = created(&app, &mapping("ok", 1)).await;
    let (s, _, f, _) = refused(
        patch(
            &app,
            &format!("{PATH}/{}", m["id"].as_str().unwrap()),
            &json!({"base_dn": "DC=elsewhere,DC=com"}),
        )
        .await,
    )
    .await;
    assert_eq!((s, f), (StatusCode::UNPROCESSABLE_ENTITY, json!("ou")));
    // Unknown fields and wrong types are 400.
    for body in [with("colour", json!("red")), with("group_dn", json!("x"))] {
        let (s, c, _, msg) = refused(app.admin_post(PATH, &body).await).await;
        assert_eq!(
            (s, c.as_str()),
            (StatusCode::BAD_REQUEST, "invalid_request")
        );
        assert!(msg.contains("unknown field"), "{msg}");
    }
    let (s, _, _, msg) = refused(
        patch(
            &app,
            &format!("{PATH}/{}", m["id"].as_str().unwrap()),
            &json!({"prio": 3}),
        )
        .await,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(msg.contains("unknown field"), "{msg}");
}

#[tokio::test]
async fn org_slug_and_directory_outage_can_be_set_and_orgs_found_by_either_ref() {
    let app = spawn_app().await;
    let org: Value = app
        .admin_get("/api/v1/admin/org")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(org["slug"], Value::Null);
    assert_eq!(org["directory_outage"], "refuse");

    let r = patch(
        &app,
        "/api/v1/admin/org",
        &json!({"slug": "Acme-Corp", "directory_outage": "allow_known_users"}),
    )
    .await;
    let status = r.status();
    let org: Value = r.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{org}");
    assert_eq!(org["slug"], "acme-corp");
    assert_eq!(org["directory_outage"], "allow_known_users");
    let org: Value = app
        .admin_get("/api/v1/admin/org")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(org["slug"], "acme-corp");

    for r in ["acme-corp", "ACME-Corp", app.org_id.as_str()] {
        let found = app.store.org_by_ref(r).await.unwrap().expect(r);
        assert_eq!(found.id, app.org_id);
        assert_eq!(found.slug.as_deref(), Some("acme-corp"));
        assert_eq!(found.directory_outage, "allow_known_users");
    }
    assert!(app.store.org_by_ref("nobody").await.unwrap().is_none());

    // Other settings leave the slug alone; taken slugs are conflicts; null clears.
    let r = patch(&app, "/api/v1/admin/org", &json!({"name": "Acme"})).await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["slug"], "acme-corp");
    let (_, other_key) = app.other_org().await;
    let r = app
        .client
        .patch(app.url("/api/v1/admin/org"))
        .bearer_auth(&other_key)
        .json(&json!({"slug": "ACME-corp"}))
        .send()
        .await
        .unwrap();
    let (s, c, _) = error_code(r).await;
    assert_eq!((s, c.as_str()), (StatusCode::CONFLICT, "conflict"));
    for bad in [
        json!({"slug": "a"}),
        json!({"slug": "-acme"}),
        json!({"slug": "acme-"}),
        json!({"slug": "acme corp"}),
        json!({"slug": "x".repeat(64)}),
        json!({"slug": "0190a6f0-0000-7000-8000-000000000000"}),
        json!({"directory_outage": "allow"}),
    ] {
        let (s, c, _) = error_code(patch(&app, "/api/v1/admin/org", &bad).await).await;
        assert_eq!(
            (s, c.as_str()),
            (StatusCode::BAD_REQUEST, "invalid_request"),
            "{bad}"
        );
    }
    let v: Value = patch(&app, "/api/v1/admin/org", &json!({"slug": null}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["slug"], Value::Null);
    assert_eq!(v["directory_outage"], "allow_known_users");
    assert!(app.store.org_by_ref("acme-corp").await.unwrap().is_none());
    // The freed slug can be taken by the other organization.
    let r = app
        .client
        .patch(app.url("/api/v1/admin/org"))
        .bearer_auth(&other_key)
        .json(&json!({"slug": "acme-corp"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}
