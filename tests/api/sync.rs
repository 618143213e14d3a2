//! Directory sync end to end, as docs/sync.md specifies it: real `imd connector` processes
//! against the real OpenLDAP and Samba AD DC (each test in an OU of its own, written with the
//! directory's admin bind: tests/api/sync_support.rs), and the Graph stand-in for Entra ID.
//! Without the directories (TEST_OPENLDAP_* / TEST_SAMBA_*, and their *_ADMIN_* binds) the
//! directory tests say so and return, unless REQUIRE_DIRECTORIES=1.

use std::time::{Duration, Instant};

use graph_standin::{DeltaExpiry, StandIn, Tenant};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{HEADER, activation, error_code, spawn_app};
use crate::imd_v2::{Kind, add_mapping, v2, v2_token, wait_status};
use crate::sync_support::*;

fn id(v: &Value) -> String {
    v["id"]
        .as_str()
        .or_else(|| v["user_id"].as_str())
        .unwrap_or_else(|| panic!("no id in {v}"))
        .to_string()
}

/// The activation's (user_id, device_id, device_credential).
fn bound(v: &Value) -> (String, String, String) {
    (
        v["user_id"].as_str().unwrap().to_string(),
        v["device_id"].as_str().unwrap().to_string(),
        v["device_credential"].as_str().unwrap().to_string(),
    )
}

fn lower(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_lowercase()
}

/// Asserts an API error's status and code.
async fn refused(r: reqwest::Response, status: StatusCode, code: &str) -> Value {
    let (s, c, body) = error_code(r).await;
    assert_eq!((s, c.as_str()), (status, code), "{body}");
    body
}

async fn delete_mapping(app: &crate::helpers::TestApp, path: &str) {
    let r = admin_send(app, reqwest::Method::DELETE, path, None).await;
    assert!(r.status().is_success(), "DELETE {path}: {}", r.status());
}

async fn patch_mapping(app: &crate::helpers::TestApp, mapping: &Value, body: Value) {
    let path = format!("/api/v1/admin/ldap-mappings/{}", id(mapping));
    let r = admin_send(app, reqwest::Method::PATCH, &path, Some(&body)).await;
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!(status, StatusCode::OK, "PATCH {path} {body}: {v}");
}

async fn approve(app: &crate::helpers::TestApp, run: &str, what: &str) -> reqwest::Response {
    app.admin_post(&format!("{RUNS}/{run}/{what}"), &json!({}))
        .await
}

// ---- the helpers themselves (these pass without the sync implementation) -----------------

#[tokio::test]
async fn the_sync_tests_directory_writes_are_what_the_connector_reads() {
    both_dirs(|d, a| async move {
        let ou = TestOu::create(&d, &a).await;
        ou.add_ou("east").await;
        ou.add_ou("west").await;
        let amy = ou.add_user(UserSpec::new("amy").department("Sales")).await;
        let bob = ou.add_user(UserSpec::new("bob").disabled()).await;
        let cat = ou.add_user(UserSpec::new("cat").no_mail()).await;
        let dan = ou.add_user(UserSpec::new("dan").under("east")).await;
        let group = ou.add_group("team", &[&amy, &dan]).await;
        let found = ou
            .search(
                "(|(objectClass=inetOrgPerson)(objectClass=user))",
                &["mail"],
            )
            .await;
        assert_eq!(found.len(), 4, "{found:?}");
        let (flag, on, off) = match d.kind {
            Kind::OpenLdap => ("employeeActive", "TRUE", "FALSE"),
            Kind::Ad => ("userAccountControl", "544", "546"),
        };
        let state = |u: &DirUser| {
            let ou = &ou;
            let u = u.clone();
            async move {
                let e = ou
                    .search(
                        &format!("(mail={})", u.mail.clone().unwrap_or_default()),
                        &[flag, "department", "departmentNumber"],
                    )
                    .await;
                assert_eq!(e.len(), 1, "{} in {e:?}", u.dn);
                (
                    attr(&e[0], flag).unwrap(),
                    attr(&e[0], "department").or_else(|| attr(&e[0], "departmentNumber")),
                )
            }
        };
        assert_eq!(state(&amy).await, (on.into(), Some("Sales".into())));
        assert_eq!(state(&bob).await.0, off);

        // The connector reads them: scope by the test OU, group membership, the enabled flag.
        let app = spawn_app().await;
        let link = SlowLink::start(&d.url).await;
        let mut conn =
            start_connector_paged(&app, &d, "dc-1", Some(vec![link.url.clone()]), 5).await;
        add_mapping(
            &app,
            json!({"name": "team", "priority": 1, "base_dn": d.base, "group": group,
                   "profile": "team", "storage_region": "eu"}),
        )
        .await;
        add_mapping(
            &app,
            json!({"name": "ou", "priority": 2, "base_dn": d.base, "ou": ou.dn,
                   "profile": "all", "storage_region": "eu"}),
        )
        .await;
        let token = v2_token(&app).await;
        let act = |serial: &str, u: &DirUser| v2(&token, serial, &u.login, d.domain());
        ou.remove_member(&group, &amy).await;
        let (_, a1) = app.activate_ok(&act("H-AMY", &amy)).await;
        assert_eq!(a1["profile"], "all", "amy left the group: {a1}");
        let (_, d1) = app.activate_ok(&act("H-DAN", &dan)).await;
        assert_eq!(d1["profile"], "team", "{d1}");
        let u = user(&app, a1["user_id"].as_str().unwrap()).await;
        assert_eq!(u["email"].as_str(), amy.mail.as_deref(), "{u}");
        assert_eq!(u["department"], "Sales", "{u}");
        assert_eq!(u["display_name"], amy.display.as_str(), "{u}");
        assert_eq!(lower(&u["dn"]), amy.dn.to_lowercase(), "{u}");
        let (s, v) = activation_result(&app, &act("H-BOB", &bob)).await;
        assert_eq!(
            (s, v["error"]["code"].clone()),
            (StatusCode::FORBIDDEN, json!("user_disabled")),
            "{v}"
        );
        let (s, v) = activation_result(&app, &act("H-CAT", &cat)).await;
        assert_eq!(
            (s, v["error"]["code"].clone()),
            (StatusCode::FORBIDDEN, json!("user_not_mapped")),
            "{v}"
        );

        // Disable, rename, move and change department: the directory id stays.
        ou.set_enabled(&amy, false).await;
        let (s, v) = activation_result(&app, &act("H-AMY-2", &amy)).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
        ou.set_enabled(&amy, true).await;
        assert_eq!(state(&amy).await.0, on);
        let dora = ou.rename(&dan, "dora").await;
        let dora = ou.move_to(&dora, Some("west")).await;
        ou.set_department(&dora, "Research").await;
        assert!(dora.dn.to_lowercase().contains("ou=west"), "{}", dora.dn);
        assert_eq!(state(&dora).await.1, Some("Research".into()));
        assert!(
            ou.search(&format!("(mail={})", dan.mail.clone().unwrap()), &["mail"])
                .await
                .is_empty()
        );
        let (status, d2) = app.activate_ok(&act("H-DAN", &dora)).await;
        assert_eq!(status, StatusCode::OK, "{d2}");
        assert_eq!(
            d2["user_id"], d1["user_id"],
            "same directory id after rename and move"
        );

        // The connector stops and starts on the same registration, through a slow link too.
        conn.stop(&app).await;
        let (s, v) = activation_result(&app, &act("H-AMY-3", &amy)).await;
        assert_eq!(
            (s, v["error"]["code"].clone()),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                json!("connector_unavailable")
            ),
            "{v}"
        );
        conn.restart(&app).await;
        link.set_delay_ms(30);
        let started = Instant::now();
        let (_, again) = app.activate_ok(&act("H-AMY-3", &amy)).await;
        assert_eq!(again["user_id"], a1["user_id"]);
        assert!(started.elapsed() >= Duration::from_millis(30));
        link.set_delay_ms(0);

        ou.delete_user(&cat).await;
        assert_eq!(
            ou.search(
                "(|(objectClass=inetOrgPerson)(objectClass=user))",
                &["mail"]
            )
            .await
            .len(),
            3
        );
        // Cleanup deletes the OU; a dropped one is deleted too.
        let dn = ou.dn.clone();
        ou.cleanup().await;
        let other = TestOu::create(&d, &a).await;
        other.add_user(UserSpec::new("zed")).await;
        let other_dn = other.dn.clone();
        drop(other);
        let check = TestOu::create(&d, &a).await;
        for gone in [&dn, &other_dn] {
            let name = gone.split(',').next().unwrap().split('=').nth(1).unwrap();
            let r = check.search_base(&format!("(ou={name})")).await;
            assert!(r.is_empty(), "{gone} still there");
        }
        check.cleanup().await;
    })
    .await;
}

// ---- the five actions -------------------------------------------------------------------

#[tokio::test]
async fn a_run_imports_mapped_users_and_names_the_ones_it_cannot_import() {
    both_dirs(|d, a| async move {
        let t = ldap_sync(&d, &a, &[]).await;
        let ou = &t.ou;
        ou.add_ou("manual").await;
        let amy = ou.add_user(UserSpec::new("amy").department("Sales")).await;
        let ben = ou.add_user(UserSpec::new("ben")).await;
        let nomail = ou.add_user(UserSpec::new("nomail").no_mail()).await;
        let off = ou.add_user(UserSpec::new("off").disabled()).await;
        let hand = ou.add_user(UserSpec::new("hand").under("manual")).await;
        // hand's winning mapping (the sub-OU's, priority 5) does not import.
        t.map(json!({"name": "manual", "priority": 5, "base_dn": d.base,
                     "ou": ou.ou_dn(Some("manual")), "profile": "manual",
                     "storage_region": "us", "auto_import": false}))
            .await;
        let m = t
            .map(
                json!({"name": "sync", "priority": 10, "base_dn": d.base, "ou": ou.dn,
                        "profile": "synced", "storage_region": "eu", "quota_bytes": 2000,
                        "auto_import": true}),
            )
            .await;

        let run = sync(&t.app).await;
        assert_counts(
            &run,
            &[
                ("seen", 5),
                ("imported", 2),
                ("updated", 0),
                ("preserved", 0),
                ("reenabled", 0),
                ("deleted", 0),
                ("errors", 0),
            ],
        );
        assert!(count(&run, "skipped") >= 1, "{run}");
        assert_eq!(
            (
                run["held"]["preserve"].clone(),
                run["held"]["delete"].clone()
            ),
            (json!(0), json!(0)),
            "{run}"
        );
        assert!(
            run["started_at"].is_string() && run["ended_at"].is_string(),
            "{run}"
        );
        let ldap = run["sources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["source"] == "ldap");
        assert_eq!(
            ldap.map(|s| s["mode"].clone()),
            Some(json!("full")),
            "{run}"
        );

        let all = users(&t.app, None).await;
        let emails: Vec<String> = all.iter().map(|u| lower(&u["email"])).collect();
        let mut want = vec![
            amy.mail.clone().unwrap().to_lowercase(),
            ben.mail.clone().unwrap().to_lowercase(),
        ];
        want.sort();
        let mut got = emails.clone();
        got.sort();
        assert_eq!(
            got, want,
            "only amy and ben: not {off:?} (disabled), {hand:?} (no import)"
        );
        let u = user_by_email(&t.app, amy.mail.as_deref().unwrap())
            .await
            .unwrap();
        assert_eq!(u["source"], "ldap", "{u}");
        assert!(
            uuid::Uuid::parse_str(u["external_id"].as_str().unwrap()).is_ok(),
            "{u}"
        );
        assert_eq!(u["status"], "active", "{u}");
        assert!(
            u["preserved_at"].is_null() && u["deleted_at"].is_null(),
            "{u}"
        );
        assert_eq!(u["profile"], "synced", "{u}");
        assert_eq!(u["storage_region"], "eu", "{u}");
        assert_eq!(u["quota_bytes"], 2000, "{u}");
        assert_eq!(u["department"], "Sales", "{u}");
        assert_eq!(lower(&u["login"]), amy.login.to_lowercase(), "{u}");
        assert_eq!(u["mapping_id"], m["id"], "{u}");

        let run_id = id(&run);
        let imported = run_users(&t.app, &run_id, "imported").await;
        assert_eq!(imported.len(), 2, "{imported:?}");
        let row = row_for(&imported, u["id"].as_str().unwrap()).expect("amy's row");
        assert_eq!(row["applied"], true, "{row}");
        assert_eq!(row["source"], "ldap", "{row}");
        assert_eq!(row["external_id"], u["external_id"], "{row}");
        assert_eq!(lower(&row["email"]), lower(&u["email"]), "{row}");
        let skipped = run_users(&t.app, &run_id, "skipped").await;
        let no_mail = skipped
            .iter()
            .find(|r| {
                let text = r.to_string().to_lowercase();
                text.contains(&nomail.login.to_lowercase())
                    || text.contains(&nomail.display.to_lowercase())
            })
            .unwrap_or_else(|| panic!("{} is named among the skipped: {skipped:?}", nomail.login));
        assert!(no_mail["user_id"].is_null(), "{no_mail}");
        assert!(
            lower(&no_mail["reason"]).contains("mail"),
            "the reason says what is missing: {no_mail}"
        );
        assert!(no_mail["name"].is_string(), "{no_mail}");

        // An activation finds the imported user; a second run finds nothing to do.
        let token = v2_token(&t.app).await;
        let (_, act) = t
            .app
            .activate_ok(&t.activation(&token, "IMP-1", &amy))
            .await;
        assert_eq!(act["user_created"], false, "{act}");
        assert_eq!(act["user_id"], u["id"], "{act}");
        assert_eq!(act["profile"], "synced", "{act}");
        let again = sync(&t.app).await;
        assert_counts(
            &again,
            &[
                ("imported", 0),
                ("updated", 0),
                ("preserved", 0),
                ("deleted", 0),
            ],
        );
        assert_eq!(users(&t.app, None).await.len(), 2);
        t.ou.cleanup().await;
    })
    .await;
}

#[tokio::test]
async fn a_rename_or_a_new_department_updates_the_same_user_and_keeps_its_devices() {
    both_dirs(|d, a| async move {
        let t = ldap_sync(&d, &a, &[]).await;
        let amy =
            t.ou.add_user(UserSpec::new("amy").department("Sales"))
                .await;
        t.map_ou("sync", 10, None, "synced").await;
        let token = v2_token(&t.app).await;
        let (_, act) = t
            .app
            .activate_ok(&t.activation(&token, "UPD-1", &amy))
            .await;
        let (uid, dev, cred) = bound(&act);
        let run = sync(&t.app).await;
        assert_counts(&run, &[("imported", 0), ("updated", 0)]);

        t.ou.set_department(&amy, "Research").await;
        let amelia = t.ou.rename(&amy, "amelia").await;
        let run = sync(&t.app).await;
        assert_counts(
            &run,
            &[
                ("updated", 1),
                ("imported", 0),
                ("preserved", 0),
                ("deleted", 0),
            ],
        );
        let rows = run_users(&t.app, &id(&run), "updated").await;
        assert_eq!(
            row_for(&rows, &uid).map(|r| r["applied"].clone()),
            Some(json!(true)),
            "{rows:?}"
        );

        let u = user(&t.app, &uid).await;
        assert_eq!(
            lower(&u["email"]),
            amelia.mail.clone().unwrap().to_lowercase(),
            "{u}"
        );
        assert_eq!(u["department"], "Research", "{u}");
        assert_eq!(lower(&u["login"]), amelia.login.to_lowercase(), "{u}");
        assert_eq!(u["display_name"], amelia.display.as_str(), "{u}");
        assert_eq!(lower(&u["dn"]), amelia.dn.to_lowercase(), "{u}");
        if d.kind == Kind::Ad {
            assert_eq!(
                lower(&u["upn"]),
                format!("{}@example.test", amelia.login),
                "{u}"
            );
        }
        assert_eq!(u["status"], "active", "{u}");
        assert_eq!(
            users(&t.app, None).await.len(),
            1,
            "an update, not a second user"
        );
        let devs = devices_of(&t.app, &uid).await;
        assert_eq!(devs.len(), 1);
        assert_eq!(devs[0]["id"], dev.as_str());
        assert_eq!(device_check(&t.app, &cred).await.0, StatusCode::OK);
        // The device comes back under the new login: the same user and device.
        let (status, again) = t
            .app
            .activate_ok(&t.activation(&token, "UPD-1", &amelia))
            .await;
        assert_eq!(status, StatusCode::OK, "{again}");
        assert_eq!(
            (again["user_id"].clone(), again["device_id"].clone()),
            (json!(uid), json!(dev))
        );

        // With auto_update_user_details off, a run leaves details as they are.
        set_settings(&t.app, json!({"auto_update_user_details": false})).await;
        t.ou.set_department(&amelia, "Finance").await;
        let run = sync(&t.app).await;
        assert_counts(&run, &[("updated", 0)]);
        assert_eq!(user(&t.app, &uid).await["department"], "Research");
        t.ou.cleanup().await;
    })
    .await;
}

#[tokio::test]
async fn a_user_disabled_in_the_directory_is_preserved_and_reenabled_when_enabled_again() {
    both_dirs(|d, a| async move {
        let t = ldap_sync(&d, &a, &[]).await;
        let amy = t.ou.add_user(UserSpec::new("amy")).await;
        let ben = t.ou.add_user(UserSpec::new("ben")).await;
        t.map_ou("sync", 10, None, "synced").await;
        let token = v2_token(&t.app).await;
        let (_, act) = t
            .app
            .activate_ok(&t.activation(&token, "PRE-1", &amy))
            .await;
        let (uid, dev, cred) = bound(&act);
        let run = sync(&t.app).await;
        assert_counts(&run, &[("imported", 1), ("preserved", 0)]);

        t.ou.set_enabled(&amy, false).await;
        let run = sync(&t.app).await;
        assert_counts(
            &run,
            &[
                ("preserved", 1),
                ("imported", 0),
                ("updated", 0),
                ("reenabled", 0),
                ("deleted", 0),
            ],
        );
        let rows = run_users(&t.app, &id(&run), "preserved").await;
        assert_eq!(rows.len(), 1, "{rows:?}");
        let row = row_for(&rows, &uid).expect("amy's row");
        assert_eq!(row["applied"], true, "{row}");
        assert_eq!(row["source"], "ldap", "{row}");
        assert!(lower(&row["reason"]).contains("disabled"), "{row}");

        let u = user(&t.app, &uid).await;
        assert_eq!(u["status"], "preserved", "{u}");
        assert!(u["preserved_at"].is_string(), "{u}");
        assert!(u["deleted_at"].is_null(), "{u}");
        let preserved = users(&t.app, Some("preserved")).await;
        assert_eq!(preserved.len(), 1);
        assert_eq!(preserved[0]["id"], uid.as_str());
        let active = users(&t.app, Some("active")).await;
        assert_eq!(active.len(), 1);
        assert_eq!(
            lower(&active[0]["email"]),
            ben.mail.clone().unwrap().to_lowercase()
        );

        // Data and devices are kept, but nothing gets in.
        assert_eq!(
            device_check(&t.app, &cred).await,
            (StatusCode::FORBIDDEN, Some("user_preserved".into()))
        );
        for serial in ["PRE-1", "PRE-2"] {
            let (s, v) = activation_result(&t.app, &t.activation(&token, serial, &amy)).await;
            assert_eq!(
                (s, v["error"]["code"].clone()),
                (StatusCode::FORBIDDEN, json!("user_preserved")),
                "{serial}: {v}"
            );
        }
        let devs = devices_of(&t.app, &uid).await;
        assert_eq!(devs.len(), 1, "{devs:?}");
        assert_eq!(
            (devs[0]["id"].clone(), devs[0]["status"].clone()),
            (json!(dev), json!("active"))
        );
        // Preserved once: a later run does not count it again.
        let run = sync(&t.app).await;
        assert_counts(&run, &[("preserved", 0)]);

        t.ou.set_enabled(&amy, true).await;
        let run = sync(&t.app).await;
        assert_counts(&run, &[("reenabled", 1), ("preserved", 0), ("imported", 0)]);
        let rows = run_users(&t.app, &id(&run), "reenabled").await;
        assert_eq!(
            row_for(&rows, &uid).map(|r| r["applied"].clone()),
            Some(json!(true)),
            "{rows:?}"
        );
        let u = user(&t.app, &uid).await;
        assert_eq!(u["status"], "active", "{u}");
        assert!(u["preserved_at"].is_null(), "{u}");
        assert_eq!(device_check(&t.app, &cred).await.0, StatusCode::OK);
        let (_, v) = t
            .app
            .activate_ok(&t.activation(&token, "PRE-2", &amy))
            .await;
        assert_eq!(v["user_id"], uid.as_str());
        t.ou.cleanup().await;
    })
    .await;
}

#[tokio::test]
async fn a_preserved_user_enabled_again_is_reenabled_by_the_activation_itself() {
    both_dirs(|d, a| async move {
        let t = ldap_sync(&d, &a, &[]).await;
        let amy = t.ou.add_user(UserSpec::new("amy")).await;
        t.map_ou("sync", 10, None, "synced").await;
        let token = v2_token(&t.app).await;
        let (_, act) = t.app.activate_ok(&t.activation(&token, "RT-1", &amy)).await;
        let (uid, _, cred) = bound(&act);
        t.ou.set_enabled(&amy, false).await;
        let run = sync(&t.app).await;
        assert_counts(&run, &[("preserved", 1)]);
        let runs_before = t.app.list(RUNS).await.len();

        // Enabled in the directory; no run: the activation asks the directory and lets her in.
        t.ou.set_enabled(&amy, true).await;
        let (status, v) = t.app.activate_ok(&t.activation(&token, "RT-2", &amy)).await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        assert_eq!(v["user_id"], uid.as_str(), "{v}");
        let u = user(&t.app, &uid).await;
        assert_eq!(u["status"], "active", "{u}");
        assert!(u["preserved_at"].is_null(), "{u}");
        assert_eq!(device_check(&t.app, &cred).await.0, StatusCode::OK);
        assert_eq!(
            t.app.list(RUNS).await.len(),
            runs_before,
            "no sync run was needed"
        );
        t.ou.cleanup().await;
    })
    .await;
}

#[tokio::test]
async fn the_outage_fall_back_never_reenables_a_preserved_user() {
    let Some((d, a)) = writable(Kind::OpenLdap) else {
        return;
    };
    let mut t = ldap_sync(&d, &a, &[]).await;
    let amy = t.ou.add_user(UserSpec::new("amy")).await;
    t.map_ou("sync", 10, None, "synced").await;
    let token = v2_token(&t.app).await;
    let (_, act) = t
        .app
        .activate_ok(&t.activation(&token, "OUT-1", &amy))
        .await;
    let (uid, _, cred) = bound(&act);
    t.ou.set_enabled(&amy, false).await;
    assert_counts(&sync(&t.app).await, &[("preserved", 1)]);
    t.ou.set_enabled(&amy, true).await;
    let r = admin_send(
        &t.app,
        reqwest::Method::PATCH,
        "/api/v1/admin/org",
        Some(&json!({"directory_outage": "allow_known_users"})),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    // The directory cannot be asked: the fall-back (imd's own record) says preserved.
    t.conn.stop(&t.app).await;
    let (s, v) = activation_result(&t.app, &t.activation(&token, "OUT-2", &amy)).await;
    assert_eq!(
        (s, v["error"]["code"].clone()),
        (StatusCode::FORBIDDEN, json!("user_preserved")),
        "{v}"
    );
    assert_eq!(user(&t.app, &uid).await["status"], "preserved");
    assert_eq!(
        device_check(&t.app, &cred).await.1.as_deref(),
        Some("user_preserved")
    );
    // The directory is back: the activation re-enables her.
    t.conn.restart(&t.app).await;
    t.app
        .activate_ok(&t.activation(&token, "OUT-2", &amy))
        .await;
    assert_eq!(user(&t.app, &uid).await["status"], "active");
    t.ou.cleanup().await;
}

#[tokio::test]
async fn a_user_preserved_past_its_profiles_retention_is_deleted_and_never_comes_back() {
    both_dirs(|d, a| async move {
        let t = ldap_sync(&d, &a, &[]).await;
        let amy = t.ou.add_user(UserSpec::new("amy")).await;
        let ben = t.ou.add_user(UserSpec::new("ben")).await;
        t.map_ou("sync", 10, None, "synced").await;
        delete_after_45_days(&t.app, "synced").await;
        let token = v2_token(&t.app).await;
        let (_, act) = t
            .app
            .activate_ok(&t.activation(&token, "DEL-1", &amy))
            .await;
        let (uid, dev, cred) = bound(&act);
        t.ou.set_enabled(&amy, false).await;
        assert_counts(&sync(&t.app).await, &[("preserved", 1), ("imported", 1)]);
        let external = user(&t.app, &uid).await["external_id"].clone();

        // 44 days on: still within the 45 days.
        t.app.clock.advance(44 * DAY);
        wait_status(&t.app, t.conn.id(), "connected").await;
        let run = sync(&t.app).await;
        assert_counts(&run, &[("deleted", 0)]);
        assert_eq!(user(&t.app, &uid).await["status"], "preserved");

        // 46 days on: deleted, its devices revoked, the reason in the run's report.
        t.app.clock.advance(2 * DAY);
        wait_status(&t.app, t.conn.id(), "connected").await;
        let run = sync(&t.app).await;
        assert_counts(&run, &[("deleted", 1), ("preserved", 0), ("reenabled", 0)]);
        let rows = run_users(&t.app, &id(&run), "deleted").await;
        assert_eq!(rows.len(), 1, "{rows:?}");
        let row = row_for(&rows, &uid).expect("amy's row");
        assert_eq!(row["applied"], true, "{row}");
        assert_eq!(row["external_id"], external, "{row}");
        assert_eq!(
            lower(&row["email"]),
            amy.mail.clone().unwrap().to_lowercase(),
            "{row}"
        );
        assert!(
            row["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "{row}"
        );
        let u = user(&t.app, &uid).await;
        assert_eq!(u["status"], "deleted", "{u}");
        assert!(u["deleted_at"].is_string(), "{u}");
        assert_eq!(
            device_check(&t.app, &cred).await.0,
            StatusCode::UNAUTHORIZED
        );
        let device: Value = t
            .app
            .admin_get(&format!("/api/v1/admin/devices/{dev}"))
            .await
            .json()
            .await
            .unwrap();
        let device = if device["device"].is_object() {
            device["device"].clone()
        } else {
            device
        };
        assert_eq!(device["status"], "revoked", "{device}");
        let deleted = users(&t.app, Some("deleted")).await;
        assert_eq!(deleted.len(), 1);
        assert_eq!(deleted[0]["id"], uid.as_str());

        // Enabled again in the directory: never re-enabled nor imported again.
        t.ou.set_enabled(&amy, true).await;
        let run = sync(&t.app).await;
        assert_counts(&run, &[("reenabled", 0), ("imported", 0), ("deleted", 0)]);
        let skipped = run_users(&t.app, &id(&run), "skipped").await;
        let row = skipped
            .iter()
            .find(|r| r["external_id"] == external)
            .unwrap_or_else(|| panic!("amy skipped: {skipped:?}"));
        assert!(lower(&row["reason"]).contains("deleted"), "{row}");
        assert_eq!(user(&t.app, &uid).await["status"], "deleted");
        let (s, v) = activation_result(&t.app, &t.activation(&token, "DEL-2", &amy)).await;
        assert_eq!(
            (s, v["error"]["code"].clone()),
            (StatusCode::FORBIDDEN, json!("user_deleted")),
            "{v}"
        );
        let all = users(&t.app, None).await;
        assert_eq!(
            all.iter().filter(|u| u["external_id"] == external).count(),
            1,
            "{all:?}"
        );
        assert_eq!(
            user_by_email(&t.app, ben.mail.as_deref().unwrap())
                .await
                .unwrap()["status"],
            "active"
        );

        // Its email is free for a new user.
        let mail = amy.mail.clone().unwrap();
        t.app
            .map(&format!(
                "{HEADER}{mail},amy-csv,WS-DEL,serial-number,DEL-CSV,,\n"
            ))
            .await;
        let v4 = t.app.token().await;
        let (_, fresh) = t
            .app
            .activate_ok(&activation(&v4, "DEL-CSV", "WS-DEL", "amy-csv"))
            .await;
        assert_eq!(fresh["user_created"], true, "{fresh}");
        assert_ne!(fresh["user_id"], uid.as_str(), "{fresh}");
        t.ou.cleanup().await;
    })
    .await;
}

// ---- safety: retention, unmapped users, priorities, moves --------------------------------

#[tokio::test]
async fn retention_deletes_nothing_without_a_connected_connector_and_resumes_once_it_is_back() {
    both_dirs(|d, a| async move {
        let mut t = ldap_sync(&d, &a, &[]).await;
        let amy = t.ou.add_user(UserSpec::new("amy")).await;
        t.map_ou("sync", 10, None, "synced").await;
        delete_after_45_days(&t.app, "synced").await;
        let token = v2_token(&t.app).await;
        let (_, act) = t
            .app
            .activate_ok(&t.activation(&token, "RET-1", &amy))
            .await;
        let (uid, _, cred) = bound(&act);
        t.ou.set_enabled(&amy, false).await;
        assert_counts(&sync(&t.app).await, &[("preserved", 1)]);

        t.conn.stop(&t.app).await;
        t.app.clock.advance(46 * DAY);
        let run = sync_with(&t.app, "").await;
        assert_eq!(
            run["status"], "failed",
            "no connector, no complete run: {run}"
        );
        assert!(
            run["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{run}"
        );
        assert_eq!(run["counts"]["deleted"].as_i64().unwrap_or(0), 0, "{run}");
        assert!(users(&t.app, Some("deleted")).await.is_empty());
        assert_eq!(user(&t.app, &uid).await["status"], "preserved");
        assert_eq!(
            device_check(&t.app, &cred).await.1.as_deref(),
            Some("user_preserved")
        );

        t.conn.restart(&t.app).await;
        let run = sync(&t.app).await;
        assert_counts(&run, &[("deleted", 1)]);
        assert_eq!(user(&t.app, &uid).await["status"], "deleted");
        t.ou.cleanup().await;
    })
    .await;
}

#[tokio::test]
async fn users_of_a_deleted_mapping_are_preserved_only_with_auto_preserve_unmapped_users() {
    both_dirs(|d, a| async move {
        let t = ldap_sync(&d, &a, &[]).await;
        t.ou.add_ou("a").await;
        t.ou.add_ou("b").await;
        let ua = t.ou.add_user(UserSpec::new("ua").under("a")).await;
        let ub = t.ou.add_user(UserSpec::new("ub").under("b")).await;
        t.map_ou("a", 10, Some("a"), "pa").await;
        let mb = t.map_ou("b", 20, Some("b"), "pb").await;
        assert_counts(&sync(&t.app).await, &[("imported", 2)]);
        let token = v2_token(&t.app).await;
        let (_, act) = t.app.activate_ok(&t.activation(&token, "UNM-1", &ub)).await;
        let (ub_id, _, cred) = bound(&act);
        delete_mapping(&t.app, &format!("/api/v1/admin/ldap-mappings/{}", id(&mb))).await;

        assert_eq!(
            get_settings(&t.app).await["auto_preserve_unmapped_users"],
            false
        );
        let run = sync(&t.app).await;
        assert_counts(&run, &[("preserved", 0), ("deleted", 0)]);
        assert_eq!(user(&t.app, &ub_id).await["status"], "active");
        assert_eq!(device_check(&t.app, &cred).await.0, StatusCode::OK);

        set_settings(&t.app, json!({"auto_preserve_unmapped_users": true})).await;
        let run = sync(&t.app).await;
        assert_counts(&run, &[("preserved", 1)]);
        let rows = run_users(&t.app, &id(&run), "preserved").await;
        let row = row_for(&rows, &ub_id).unwrap_or_else(|| panic!("ub preserved: {rows:?}"));
        assert!(
            lower(&row["reason"]).contains("mapping"),
            "the reason says it is unmapped: {row}"
        );
        assert_eq!(user(&t.app, &ub_id).await["status"], "preserved");
        assert_eq!(
            device_check(&t.app, &cred).await.1.as_deref(),
            Some("user_preserved")
        );
        let ua_row = user_by_email(&t.app, ua.mail.as_deref().unwrap())
            .await
            .unwrap();
        assert_eq!(ua_row["status"], "active");
        t.ou.cleanup().await;
    })
    .await;
}

#[tokio::test]
async fn a_user_under_two_mappings_takes_the_lower_priority_number_and_moves_to_the_other_when_it_leaves()
 {
    both_dirs(|d, a| async move {
        let t = ldap_sync(&d, &a, &[]).await;
        // Leaving a mapping must be an update here, never a preserve.
        set_settings(&t.app, json!({"auto_preserve_unmapped_users": true})).await;
        let u1 = t.ou.add_user(UserSpec::new("u1")).await;
        let u2 = t.ou.add_user(UserSpec::new("u2")).await;
        let group = t.ou.add_group("team", &[&u1, &u2]).await;
        let first = t
            .map(
                json!({"name": "first", "priority": 5, "base_dn": d.base, "group": group,
                        "profile": "p-first", "storage_region": "us", "quota_bytes": 5000,
                        "auto_import": true}),
            )
            .await;
        let second = t.map_ou("second", 10, None, "p-second").await;
        assert_counts(&sync(&t.app).await, &[("imported", 2)]);
        let by_mail = |u: &DirUser| u.mail.clone().unwrap();
        for u in [&u1, &u2] {
            let row = user_by_email(&t.app, &by_mail(u)).await.unwrap();
            assert_eq!(
                (
                    row["profile"].clone(),
                    row["storage_region"].clone(),
                    row["quota_bytes"].clone(),
                    row["mapping_id"].clone()
                ),
                (
                    json!("p-first"),
                    json!("us"),
                    json!(5000),
                    first["id"].clone()
                ),
                "{row}"
            );
        }
        let token = v2_token(&t.app).await;
        let (_, act) = t.app.activate_ok(&t.activation(&token, "TWO-1", &u1)).await;
        let (u1_id, dev, cred) = bound(&act);
        let u2_id = id(&user_by_email(&t.app, &by_mail(&u2)).await.unwrap());

        // u2 leaves the group: the other mapping's policy, the same user.
        t.ou.remove_member(&group, &u2).await;
        let run = sync(&t.app).await;
        assert_counts(&run, &[("updated", 1), ("preserved", 0), ("imported", 0)]);
        let row = user(&t.app, &u2_id).await;
        assert_eq!(
            (
                row["profile"].clone(),
                row["storage_region"].clone(),
                row["quota_bytes"].clone(),
                row["mapping_id"].clone(),
                row["status"].clone()
            ),
            (
                json!("p-second"),
                json!("eu"),
                Value::Null,
                second["id"].clone(),
                json!("active")
            ),
            "{row}"
        );

        // Back in the group: back under the first mapping.
        t.ou.add_member(&group, &u2).await;
        let run = sync(&t.app).await;
        assert_counts(&run, &[("updated", 1), ("preserved", 0)]);
        assert_eq!(user(&t.app, &u2_id).await["profile"], "p-first");

        // The first mapping goes: both move to the second one, devices and all.
        delete_mapping(
            &t.app,
            &format!("/api/v1/admin/ldap-mappings/{}", id(&first)),
        )
        .await;
        let run = sync(&t.app).await;
        assert_counts(&run, &[("updated", 2), ("preserved", 0), ("imported", 0)]);
        let row = user(&t.app, &u1_id).await;
        assert_eq!(
            (row["profile"].clone(), row["status"].clone()),
            (json!("p-second"), json!("active")),
            "{row}"
        );
        assert_eq!(devices_of(&t.app, &u1_id).await[0]["id"], dev.as_str());
        assert_eq!(device_check(&t.app, &cred).await.0, StatusCode::OK);
        assert_eq!(users(&t.app, None).await.len(), 2);
        t.ou.cleanup().await;
    })
    .await;
}

#[tokio::test]
async fn a_user_moved_to_another_ou_under_the_same_mapping_keeps_its_identity_and_devices() {
    both_dirs(|d, a| async move {
        let t = ldap_sync(&d, &a, &[]).await;
        set_settings(&t.app, json!({"auto_preserve_unmapped_users": true})).await;
        t.ou.add_ou("east").await;
        t.ou.add_ou("west").await;
        let amy = t.ou.add_user(UserSpec::new("amy").under("east")).await;
        t.map_ou("all", 10, None, "synced").await;
        let token = v2_token(&t.app).await;
        let (_, act) = t
            .app
            .activate_ok(&t.activation(&token, "MOVE-1", &amy))
            .await;
        let (uid, dev, cred) = bound(&act);
        assert!(lower(&user(&t.app, &uid).await["dn"]).contains("ou=east"));
        sync(&t.app).await;

        let moved = t.ou.move_to(&amy, Some("west")).await;
        let run = sync(&t.app).await;
        assert_counts(
            &run,
            &[
                ("updated", 1),
                ("imported", 0),
                ("preserved", 0),
                ("deleted", 0),
            ],
        );
        let u = user(&t.app, &uid).await;
        assert!(lower(&u["dn"]).contains("ou=west"), "{u}");
        assert_eq!(u["status"], "active", "{u}");
        assert_eq!(users(&t.app, None).await.len(), 1);
        let devs = devices_of(&t.app, &uid).await;
        assert_eq!(devs.len(), 1);
        assert_eq!(devs[0]["id"], dev.as_str());
        assert_eq!(device_check(&t.app, &cred).await.0, StatusCode::OK);
        let (status, again) = t
            .app
            .activate_ok(&t.activation(&token, "MOVE-1", &moved))
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(again["device_id"], dev.as_str());
        t.ou.cleanup().await;
    })
    .await;
}

// ---- never lose anyone by accident -------------------------------------------------------

#[tokio::test]
async fn a_mass_change_waits_for_approval_and_a_rejected_one_changes_nobody() {
    both_dirs(|d, a| async move {
        let t = ldap_sync(&d, &a, &[]).await;
        set_settings(
            &t.app,
            json!({"auto_preserve_unmapped_users": true, "mass_change_threshold_min": 2,
                   "mass_change_threshold_percent": 5}),
        )
        .await;
        let mut keep = Vec::new();
        for i in 0..4 {
            keep.push(
                t.ou.add_user(UserSpec::new(&format!("keep{i}")).department("Keep"))
                    .await,
            );
        }
        let mut drop = Vec::new();
        for i in 0..6 {
            drop.push(
                t.ou.add_user(UserSpec::new(&format!("drop{i}")).department("Drop"))
                    .await,
            );
        }
        let m = t.map_ou("all", 10, None, "synced").await;
        assert_counts(&sync(&t.app).await, &[("imported", 10)]);
        let drop_mails: std::collections::BTreeSet<String> = drop
            .iter()
            .map(|u| u.mail.clone().unwrap().to_lowercase())
            .collect();
        let preserved_mails = |v: Vec<Value>| -> std::collections::BTreeSet<String> {
            v.iter().map(|u| lower(&u["email"])).collect()
        };

        // A filter that leaves 6 of 10 (60 %) unmapped: held for approval.
        patch_mapping(&t.app, &m, json!({"filter": d.department_filter("Keep")})).await;
        let held = sync_with(&t.app, "").await;
        assert_eq!(held["status"], "needs_approval", "{held}");
        assert_eq!(
            (
                held["held"]["preserve"].clone(),
                held["held"]["delete"].clone()
            ),
            (json!(6), json!(0)),
            "{held}"
        );
        assert!(
            users(&t.app, Some("preserved")).await.is_empty(),
            "nobody preserved yet"
        );
        assert_eq!(users(&t.app, Some("active")).await.len(), 10);
        let rows = run_users(&t.app, &id(&held), "preserved").await;
        assert_eq!(rows.len(), 6, "{rows:?}");
        assert!(rows.iter().all(|r| r["applied"] == false), "{rows:?}");

        let r = approve(&t.app, &id(&held), "approve").await;
        assert!(r.status().is_success(), "approve: {}", r.status());
        assert_eq!(get_run(&t.app, &id(&held)).await["status"], "approved");
        assert_eq!(
            preserved_mails(users(&t.app, Some("preserved")).await),
            drop_mails
        );
        let rows = run_users(&t.app, &id(&held), "preserved").await;
        assert!(rows.iter().all(|r| r["applied"] == true), "{rows:?}");
        for what in ["approve", "reject"] {
            refused(
                approve(&t.app, &id(&held), what).await,
                StatusCode::CONFLICT,
                "sync_run_not_pending",
            )
            .await;
        }

        // Back to everyone: the six are re-enabled (re-enables are never held).
        patch_mapping(&t.app, &m, json!({"filter": null})).await;
        let run = sync(&t.app).await;
        assert_counts(&run, &[("reenabled", 6), ("preserved", 0)]);
        refused(
            approve(&t.app, &id(&run), "approve").await,
            StatusCode::CONFLICT,
            "sync_run_not_pending",
        )
        .await;

        // The same mistake twice: only the newest pending run can be approved; rejected, it
        // changes nobody.
        patch_mapping(&t.app, &m, json!({"filter": d.department_filter("Keep")})).await;
        let older = sync_with(&t.app, "").await;
        assert_eq!(older["status"], "needs_approval", "{older}");
        let newer = sync_with(&t.app, "").await;
        assert_eq!(newer["status"], "needs_approval", "{newer}");
        assert_eq!(newer["held"]["preserve"], 6, "{newer}");
        refused(
            approve(&t.app, &id(&older), "approve").await,
            StatusCode::CONFLICT,
            "sync_run_not_pending",
        )
        .await;
        let r = approve(&t.app, &id(&newer), "reject").await;
        assert!(r.status().is_success(), "reject: {}", r.status());
        assert_eq!(get_run(&t.app, &id(&newer)).await["status"], "rejected");
        assert!(users(&t.app, Some("preserved")).await.is_empty());
        assert_eq!(users(&t.app, Some("active")).await.len(), 10);

        // A completed run supersedes the older pending one.
        patch_mapping(&t.app, &m, json!({"filter": null})).await;
        sync(&t.app).await;
        assert_eq!(get_run(&t.app, &id(&older)).await["status"], "rejected");

        // Two preserves do not exceed a minimum of 2: applied at once.
        t.ou.set_enabled(&keep[0], false).await;
        t.ou.set_enabled(&keep[1], false).await;
        let run = sync(&t.app).await;
        assert_counts(&run, &[("preserved", 2)]);
        assert_eq!(run["held"]["preserve"], 0, "{run}");
        t.ou.cleanup().await;
    })
    .await;
}

#[tokio::test]
async fn a_run_whose_connector_dies_part_way_preserves_and_deletes_nobody_and_the_next_run_converges()
 {
    both_dirs(|d, a| async move {
        let ou = TestOu::create(&d, &a).await;
        let app = sync_app(&[("sync.page_size", "5"), ("sync.page_timeout_ms", "10000")]).await;
        let link = SlowLink::start(&d.url).await;
        let mut conn =
            start_connector_paged(&app, &d, "dc-1", Some(vec![link.url.clone()]), 5).await;
        // Nothing held back here: any preserve of the broken run would show.
        set_settings(
            &app,
            json!({"auto_preserve_unmapped_users": true, "mass_change_threshold_min": 1_000_000}),
        )
        .await;
        let people = ou.add_users("u", 60).await;
        add_mapping(
            &app,
            json!({"name": "all", "priority": 10, "base_dn": d.base, "ou": ou.dn,
                   "profile": "synced", "storage_region": "eu", "auto_import": true}),
        )
        .await;
        delete_after_45_days(&app, "synced").await;
        assert_counts(&sync(&app).await, &[("imported", 60)]);
        ou.set_enabled(&people[0], false).await;
        assert_counts(&sync(&app).await, &[("preserved", 1)]);
        let due = user_by_email(&app, people[0].mail.as_deref().unwrap())
            .await
            .unwrap();
        app.clock.advance(46 * DAY);
        wait_status(&app, conn.id(), "connected").await;

        // What a complete run would do: delete one, preserve four, import five.
        for i in [10, 30, 50] {
            ou.set_enabled(&people[i], false).await;
        }
        ou.delete_user(&people[59]).await;
        let newcomers = ou.add_users("n", 5).await;

        // Every directory answer now takes 150 ms: 13+ pages of 5 take seconds.
        link.set_delay_ms(150);
        let run_id = start_sync(&app, "").await;
        let started = Instant::now();
        let mut before = get_run(&app, &run_id).await;
        while before["counts"]["seen"].as_i64().unwrap_or(0) == 0
            && started.elapsed() < Duration::from_millis(500)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
            before = get_run(&app, &run_id).await;
        }
        assert_eq!(
            before["status"], "running",
            "still going when its connector dies: {before}"
        );
        conn.kill();
        let run = wait_run(&app, &run_id).await;
        assert_eq!(run["status"], "failed", "{run}");
        assert!(
            run["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{run}"
        );
        assert_eq!(run["counts"]["preserved"].as_i64().unwrap_or(0), 0, "{run}");
        assert_eq!(run["counts"]["deleted"].as_i64().unwrap_or(0), 0, "{run}");
        let preserved = users(&app, Some("preserved")).await;
        assert_eq!(preserved.len(), 1, "{preserved:?}");
        assert_eq!(preserved[0]["id"], due["id"]);
        assert!(users(&app, Some("deleted")).await.is_empty());
        for i in [10, 30, 50, 59] {
            let u = user_by_email(&app, people[i].mail.as_deref().unwrap())
                .await
                .unwrap();
            assert_eq!(u["status"], "active", "{u}");
        }

        // The connector is back: the next run does it all, once.
        link.set_delay_ms(0);
        conn.restart(&app).await;
        let run = sync(&app).await;
        assert_counts(&run, &[("deleted", 1), ("preserved", 4)]);
        let all = users(&app, None).await;
        assert_eq!(all.len(), 65, "60 + 5 newcomers, each once");
        let emails: std::collections::BTreeSet<String> =
            all.iter().map(|u| lower(&u["email"])).collect();
        assert_eq!(emails.len(), 65);
        for n in &newcomers {
            assert!(
                emails.contains(&n.mail.clone().unwrap().to_lowercase()),
                "{n:?} imported"
            );
        }
        assert_eq!(
            user(&app, due["id"].as_str().unwrap()).await["status"],
            "deleted"
        );
        let mut preserved = preserved_emails(&app).await;
        preserved.sort();
        let mut want: Vec<String> = [10, 30, 50, 59]
            .iter()
            .map(|i| people[*i].mail.clone().unwrap().to_lowercase())
            .collect();
        want.sort();
        assert_eq!(preserved, want);
        assert_eq!(users(&app, Some("active")).await.len(), 60);
        drop(conn);
        ou.cleanup().await;
    })
    .await;
}

async fn preserved_emails(app: &crate::helpers::TestApp) -> Vec<String> {
    users(app, Some("preserved"))
        .await
        .iter()
        .map(|u| lower(&u["email"]))
        .collect()
}

#[tokio::test]
async fn two_servers_on_one_database_start_one_run_between_them() {
    let (app, g) = azure_sync_app(&[], Tenant::fixture().with_bulk_users(40)).await;
    // Every Graph call takes 150 ms: the run outlasts both requests.
    g.set_delay_ms("*", 150);
    let second = second_server(&app).await;
    let post = |base: String| {
        let client = app.client.clone();
        let key = app.admin_key.clone();
        async move {
            let r = client
                .post(format!("{base}{SYNC}"))
                .bearer_auth(key)
                .send()
                .await
                .unwrap();
            let s = r.status();
            (s, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (a, b) = tokio::join!(post(app.addr.clone()), post(second.clone()));
    let (started, busy) = match (a.0, b.0) {
        (StatusCode::ACCEPTED, StatusCode::CONFLICT) => (a.1, b.1),
        (StatusCode::CONFLICT, StatusCode::ACCEPTED) => (b.1, a.1),
        _ => panic!("one 202 and one 409 expected: {a:?} {b:?}"),
    };
    assert_eq!(busy["error"]["code"], "sync_in_progress", "{busy}");
    let run_id = started["id"].as_str().unwrap().to_string();
    assert!(
        busy["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains(&run_id)
            || busy["error"]["run_id"] == run_id.as_str(),
        "the 409 names the running run {run_id}: {busy}"
    );
    let run = wait_run(&app, &run_id).await;
    assert_eq!(run["status"], "completed", "{run}");
    for base in [&app.addr, &second] {
        let v: Value = app
            .client
            .get(format!("{base}{RUNS}"))
            .bearer_auth(&app.admin_key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let items = v["items"].as_array().unwrap();
        assert_eq!(items.len(), 1, "{v}");
        assert_eq!(items[0]["id"], run_id.as_str());
    }
    // The lease is free again, on either server.
    g.set_delay_ms("*", 0);
    let r = app
        .client
        .post(format!("{second}{SYNC}"))
        .bearer_auth(&app.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let next: Value = r.json().await.unwrap();
    assert_ne!(next["id"], run_id.as_str());
    assert_eq!(
        wait_run(&app, next["id"].as_str().unwrap()).await["status"],
        "completed"
    );
}

// ---- dry runs and validation --------------------------------------------------------------

#[tokio::test]
async fn a_dry_run_reports_what_a_run_would_do_and_changes_nothing() {
    both_dirs(|d, a| async move {
        let t = ldap_sync(&d, &a, &[]).await;
        let amy = t.ou.add_user(UserSpec::new("amy")).await;
        let _ben = t.ou.add_user(UserSpec::new("ben")).await;
        let cat = t.ou.add_user(UserSpec::new("cat")).await;
        t.map_ou("sync", 10, None, "synced").await;
        delete_after_45_days(&t.app, "synced").await;
        let token = v2_token(&t.app).await;
        let (_, act) = t
            .app
            .activate_ok(&t.activation(&token, "DRY-1", &amy))
            .await;
        let amy_id = bound(&act).0;
        let (_, act) = t
            .app
            .activate_ok(&t.activation(&token, "DRY-2", &cat))
            .await;
        let cat_id = bound(&act).0;
        t.ou.set_enabled(&cat, false).await;
        assert_counts(&sync(&t.app).await, &[("imported", 1), ("preserved", 1)]);

        let dan = t.ou.add_user(UserSpec::new("dan")).await;
        t.ou.set_department(&amy, "Research").await;
        let dry = sync_with(&t.app, "?dry_run=true").await;
        assert_eq!(dry["status"], "completed", "{dry}");
        assert_eq!(dry["dry_run"], true, "{dry}");
        assert!(dry["as_of"].is_null(), "{dry}");
        assert_counts(
            &dry,
            &[
                ("imported", 1),
                ("updated", 1),
                ("preserved", 0),
                ("deleted", 0),
            ],
        );
        let rows = run_users(&t.app, &id(&dry), "imported").await;
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(
            lower(&rows[0]["email"]),
            dan.mail.clone().unwrap().to_lowercase()
        );
        assert_eq!(
            rows[0]["applied"], false,
            "nothing is applied in a dry run: {rows:?}"
        );
        assert_eq!(users(&t.app, None).await.len(), 3, "dan not imported");
        assert_eq!(user(&t.app, &amy_id).await["department"], "Staff");

        // Next month's deletions, previewed.
        let as_of = server_time_in_days(&t.app, 46);
        let preview = sync_with(
            &t.app,
            &format!("?dry_run=true&as_of={}", urlencode(&as_of)),
        )
        .await;
        assert_eq!(preview["status"], "completed", "{preview}");
        assert!(preview["as_of"].is_string(), "{preview}");
        assert_counts(&preview, &[("deleted", 1)]);
        let rows = run_users(&t.app, &id(&preview), "deleted").await;
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0]["user_id"], cat_id.as_str());
        assert_eq!(rows[0]["applied"], false);
        assert_eq!(user(&t.app, &cat_id).await["status"], "preserved");

        // as_of is for dry runs only, and must be a date.
        let runs = t.app.list(RUNS).await.len();
        let r = post_sync(&t.app, &format!("?as_of={}", urlencode(&as_of))).await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let body = r.text().await.unwrap();
        assert!(body.contains("as_of"), "the error names as_of: {body}");
        let r = post_sync(&t.app, "?dry_run=true&as_of=next-month").await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(t.app.list(RUNS).await.len(), runs, "no run started");

        // The real run still has everything to do.
        let run = sync(&t.app).await;
        assert_counts(&run, &[("imported", 1), ("updated", 1), ("deleted", 0)]);
        assert_eq!(user(&t.app, &amy_id).await["department"], "Research");
        t.ou.cleanup().await;
    })
    .await;
}

#[tokio::test]
async fn settings_and_profiles_refuse_bad_values_naming_the_field() {
    let app = sync_app(&[]).await;
    let s = get_settings(&app).await;
    for (k, v) in [
        ("auto_sync_interval_hours", json!(24)),
        ("auto_update_user_details", json!(true)),
        ("auto_preserve_unmapped_users", json!(false)),
        ("mass_change_threshold_percent", json!(5)),
        ("mass_change_threshold_min", json!(10)),
        ("updated_at", Value::Null),
        ("last_run_at", Value::Null),
    ] {
        assert_eq!(s[k], v, "default {k}: {s}");
    }
    // Nothing to sync yet, so nothing is scheduled.
    assert!(s["next_run_at"].is_null(), "{s}");
    let r = app.client.get(app.url(SETTINGS)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Any subset; the others are kept.
    let v = set_settings(&app, json!({"auto_sync_interval_hours": 12})).await;
    assert_eq!(v["auto_sync_interval_hours"], 12);
    assert_eq!(v["mass_change_threshold_min"], 10);
    assert!(v["updated_at"].is_string(), "{v}");
    for (k, ok) in [
        ("auto_sync_interval_hours", json!(1)),
        ("auto_sync_interval_hours", json!(8760)),
        ("mass_change_threshold_percent", json!(0)),
        ("mass_change_threshold_percent", json!(100)),
        ("mass_change_threshold_min", json!(0)),
        ("mass_change_threshold_min", json!(1_000_000)),
    ] {
        assert_eq!(set_settings(&app, json!({ k: ok })).await[k], ok);
    }
    set_settings(&app, json!({"auto_sync_interval_hours": 12, "mass_change_threshold_percent": 5, "mass_change_threshold_min": 10})).await;
    let bad = [
        ("auto_sync_interval_hours", json!(0)),
        ("auto_sync_interval_hours", json!(8761)),
        ("auto_sync_interval_hours", json!("24")),
        ("auto_sync_interval_hours", json!(1.5)),
        ("auto_update_user_details", json!("yes")),
        ("auto_preserve_unmapped_users", json!(1)),
        ("mass_change_threshold_percent", json!(101)),
        ("mass_change_threshold_percent", json!(-1)),
        ("mass_change_threshold_min", json!(-1)),
        ("mass_change_threshold_min", json!(1_000_001)),
        ("auto_sync_interval", json!(12)),
    ];
    for (field, value) in bad {
        let body = refused(
            put_settings(&app, &json!({ field: value })).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_setting",
        )
        .await;
        assert_eq!(body["error"]["field"], field, "{field}={value}: {body}");
    }
    // A bad field refuses the whole request.
    let body = refused(
        put_settings(
            &app,
            &json!({"auto_sync_interval_hours": 6, "mass_change_threshold_percent": 101}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_setting",
    )
    .await;
    assert_eq!(
        body["error"]["field"], "mass_change_threshold_percent",
        "{body}"
    );
    assert_eq!(get_settings(&app).await["auto_sync_interval_hours"], 12);

    // Profiles: defaults for a name never configured, 1..=366 days.
    let r = app.admin_get(&format!("{PROFILES}/never-set")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let p: Value = r.json().await.unwrap();
    assert_eq!(
        (
            p["name"].clone(),
            p["auto_delete_preserved"].clone(),
            p["delete_after_days"].clone(),
            p["configured"].clone()
        ),
        (json!("never-set"), json!(false), json!(30), json!(false)),
        "{p}"
    );
    for (field, value) in [
        ("delete_after_days", json!(0)),
        ("delete_after_days", json!(367)),
        ("delete_after_days", json!(-1)),
        ("delete_after_days", json!("45")),
        ("auto_delete_preserved", json!("yes")),
        ("keep_days", json!(10)),
    ] {
        let body = refused(
            put_profile(&app, "eng", &json!({ field: value })).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_setting",
        )
        .await;
        assert_eq!(body["error"]["field"], field, "{field}={value}: {body}");
    }
    for days in [1, 366] {
        assert_eq!(
            set_profile(&app, "eng", json!({"delete_after_days": days})).await["delete_after_days"],
            days
        );
    }
    let p = set_profile(&app, "eng", json!({"auto_delete_preserved": true})).await;
    assert_eq!(
        (
            p["auto_delete_preserved"].clone(),
            p["delete_after_days"].clone()
        ),
        (json!(true), json!(366)),
        "either field: {p}"
    );
    // Profiles in use by a mapping are listed too.
    add_mapping(
        &app,
        json!({"name": "sales", "priority": 1, "base_dn": "dc=example,dc=com", "profile": "sales",
               "storage_region": "eu"}),
    )
    .await;
    let items = app.list(PROFILES).await;
    let find = |n: &str| items.iter().find(|p| p["name"] == n).cloned();
    let eng = find("eng").unwrap_or_else(|| panic!("eng listed: {items:?}"));
    assert_eq!(
        (
            eng["configured"].clone(),
            eng["auto_delete_preserved"].clone()
        ),
        (json!(true), json!(true))
    );
    let sales = find("sales").unwrap_or_else(|| panic!("sales listed: {items:?}"));
    assert_eq!(
        (
            sales["configured"].clone(),
            sales["users"].clone(),
            sales["delete_after_days"].clone()
        ),
        (json!(false), json!(0), json!(30))
    );
    let r = admin_send(
        &app,
        reqwest::Method::DELETE,
        &format!("{PROFILES}/eng"),
        None,
    )
    .await;
    assert!(r.status().is_success(), "{}", r.status());
    let p: Value = app
        .admin_get(&format!("{PROFILES}/eng"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            p["auto_delete_preserved"].clone(),
            p["delete_after_days"].clone(),
            p["configured"].clone()
        ),
        (json!(false), json!(30), json!(false))
    );

    // Runs: none yet; unknown ids are 404.
    assert!(app.list(RUNS).await.is_empty());
    assert_eq!(
        app.admin_get(&format!("{RUNS}/no-such-run")).await.status(),
        StatusCode::NOT_FOUND
    );
    for what in ["approve", "reject"] {
        assert_eq!(
            approve(&app, "no-such-run", what).await.status(),
            StatusCode::NOT_FOUND,
            "{what}"
        );
    }
}

#[tokio::test]
async fn a_run_without_any_mapping_is_refused_as_not_configured() {
    let app = sync_app(&[]).await;
    refused(
        post_sync(&app, "").await,
        StatusCode::CONFLICT,
        "sync_not_configured",
    )
    .await;
    refused(
        post_sync(&app, "?dry_run=true").await,
        StatusCode::CONFLICT,
        "sync_not_configured",
    )
    .await;
    // Entra ID configured but no Azure AD mapping: still nothing to sync.
    let g = StandIn::start(Tenant::fixture()).await;
    crate::imd_v5::configure(&app, &g, false).await;
    refused(
        post_sync(&app, "").await,
        StatusCode::CONFLICT,
        "sync_not_configured",
    )
    .await;
    assert!(app.list(RUNS).await.is_empty());
}

// ---- Entra ID through the Graph stand-in ---------------------------------------------------

fn azure_source(run: &Value) -> Value {
    run["sources"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["source"] == "azure").cloned())
        .unwrap_or_else(|| panic!("no azure source in {run}"))
}

async fn azure_user(app: &crate::helpers::TestApp, t: &Tenant, upn: &str) -> Value {
    let ext = t.user_id(upn).unwrap();
    users(app, None)
        .await
        .into_iter()
        .find(|u| u["external_id"] == ext.as_str())
        .unwrap_or_else(|| panic!("{upn} ({ext}) not imported"))
}

#[tokio::test]
async fn azure_first_run_imports_enabled_members_and_later_runs_apply_the_delta() {
    let tenant = Tenant::fixture();
    let (app, g) = azure_sync_app(&[], tenant.clone()).await;
    let run = sync(&app).await;
    assert_eq!(azure_source(&run)["mode"], "full", "{run}");
    let all = users(&app, None).await;
    assert_eq!(count(&run, "imported"), all.len() as i64, "{run}");
    for upn in [
        "AdeleV@contoso.test",
        "sam@contoso.test",
        "frank@contoso.test",
        "henrik@contoso.test",
        "carla@contoso.test",
        "zoë@contoso.test",
    ] {
        let u = azure_user(&app, &tenant, upn).await;
        assert_eq!(
            (
                u["source"].clone(),
                u["status"].clone(),
                u["profile"].clone()
            ),
            (json!("azure"), json!("active"), json!("staff")),
            "{u}"
        );
    }
    let dave = tenant.user_id("dave.disabled@contoso.test").unwrap();
    assert!(
        all.iter().all(|u| u["external_id"] != dave.as_str()),
        "a disabled member is not imported"
    );
    assert!(all.iter().all(|u| u["source"] == "azure"));
    let adele = azure_user(&app, &tenant, "AdeleV@contoso.test").await;
    assert_eq!(adele["department"], "Engineering");

    let run = sync(&app).await;
    assert_eq!(azure_source(&run)["mode"], "delta", "{run}");
    assert_counts(&run, &[("imported", 0), ("updated", 0), ("preserved", 0)]);

    g.set_user_enabled("sam@contoso.test", false);
    g.delete_user("frank@contoso.test", false);
    g.update_user("AdeleV@contoso.test", json!({"department": "Research"}));
    let run = sync(&app).await;
    assert_eq!(azure_source(&run)["mode"], "delta", "{run}");
    assert_counts(
        &run,
        &[
            ("preserved", 2),
            ("updated", 1),
            ("imported", 0),
            ("deleted", 0),
        ],
    );
    let sam = azure_user(&app, &tenant, "sam@contoso.test").await;
    let frank = azure_user(&app, &tenant, "frank@contoso.test").await;
    for u in [&sam, &frank] {
        assert_eq!(u["status"], "preserved", "{u}");
        assert!(u["preserved_at"].is_string(), "{u}");
    }
    let rows = run_users(&app, &id(&run), "preserved").await;
    for u in [&sam, &frank] {
        let row =
            row_for(&rows, u["id"].as_str().unwrap()).unwrap_or_else(|| panic!("{u} in {rows:?}"));
        assert_eq!(
            (row["source"].clone(), row["applied"].clone()),
            (json!("azure"), json!(true)),
            "{row}"
        );
    }
    assert_eq!(
        azure_user(&app, &tenant, "AdeleV@contoso.test").await["department"],
        "Research"
    );
    let token = app.token_with(json!({"version": "v5", "name": "v5"})).await;
    let (s, v) = activation_result(&app, &v5(&token, "AZ-SAM", "sam@contoso.test")).await;
    assert_eq!(
        (s, v["error"]["code"].clone()),
        (StatusCode::FORBIDDEN, json!("user_preserved")),
        "{v}"
    );

    g.set_user_enabled("sam@contoso.test", true);
    let run = sync(&app).await;
    assert_eq!(azure_source(&run)["mode"], "delta", "{run}");
    assert_counts(&run, &[("reenabled", 1), ("preserved", 0)]);
    assert_eq!(
        azure_user(&app, &tenant, "sam@contoso.test").await["status"],
        "active"
    );
}

#[tokio::test]
async fn azure_an_expired_delta_link_means_a_full_run_that_says_why() {
    let tenant = Tenant::fixture();
    let (app, g) = azure_sync_app(&[], tenant.clone()).await;
    sync(&app).await;
    assert_eq!(azure_source(&sync(&app).await)["mode"], "delta");
    let shapes = [
        DeltaExpiry::GoneSyncStateNotFound,
        DeltaExpiry::BadRequestSyncStateNotFound,
        DeltaExpiry::GoneReset,
        DeltaExpiry::ResyncRequired,
    ];
    for (i, how) in shapes.into_iter().enumerate() {
        let dept = format!("Dept {i}");
        g.update_user("carla@contoso.test", json!({"department": dept}));
        g.expire_delta_tokens(how);
        let run = sync(&app).await;
        let src = azure_source(&run);
        assert_eq!(src["mode"], "full", "{how:?}: {run}");
        assert!(
            lower(&src["reason"]).contains("delta"),
            "{how:?}: the reason says why: {run}"
        );
        assert_counts(&run, &[("updated", 1), ("preserved", 0), ("imported", 0)]);
        assert_eq!(
            azure_user(&app, &tenant, "carla@contoso.test").await["department"],
            dept.as_str()
        );
        let next = sync(&app).await;
        assert_eq!(
            azure_source(&next)["mode"],
            "delta",
            "{how:?}: a new delta link: {next}"
        );
    }
}

#[tokio::test]
async fn azure_a_dry_run_does_not_advance_the_delta_link() {
    let tenant = Tenant::fixture();
    let (app, g) = azure_sync_app(&[], tenant.clone()).await;
    sync(&app).await;
    sync(&app).await;
    g.update_user("carla@contoso.test", json!({"department": "Legal"}));
    let dry = sync_with(&app, "?dry_run=true").await;
    assert_eq!(dry["status"], "completed", "{dry}");
    assert_eq!(azure_source(&dry)["mode"], "delta", "{dry}");
    assert_counts(&dry, &[("updated", 1)]);
    assert_eq!(
        azure_user(&app, &tenant, "carla@contoso.test").await["department"],
        "IT"
    );
    let run = sync(&app).await;
    assert_eq!(azure_source(&run)["mode"], "delta", "{run}");
    assert_counts(&run, &[("updated", 1)]);
    assert_eq!(
        azure_user(&app, &tenant, "carla@contoso.test").await["department"],
        "Legal"
    );
}

#[tokio::test]
async fn azure_a_user_matching_no_mapping_any_more_is_preserved_only_with_auto_preserve() {
    let tenant = Tenant::fixture();
    let app = sync_app(&[]).await;
    let g = StandIn::start(tenant.clone()).await;
    crate::imd_v5::configure(&app, &g, false).await;
    azure_mapping(
        &app,
        json!({"name": "sales", "priority": 1, "source": {"attribute": "department", "value": "Sales"},
               "profile": "sales", "storage_region": "us", "auto_import": true}),
    )
    .await;
    sync(&app).await;
    let sam = azure_user(&app, &tenant, "sam@contoso.test").await;
    assert_eq!(sam["profile"], "sales");

    g.update_user("sam@contoso.test", json!({"department": "Marketing"}));
    let run = sync(&app).await;
    assert_counts(&run, &[("preserved", 0)]);
    assert_eq!(
        user(&app, sam["id"].as_str().unwrap()).await["status"],
        "active"
    );

    set_settings(&app, json!({"auto_preserve_unmapped_users": true})).await;
    g.update_user("sam@contoso.test", json!({"department": "Finance"}));
    let run = sync(&app).await;
    assert_counts(&run, &[("preserved", 1)]);
    let rows = run_users(&app, &id(&run), "preserved").await;
    let row = row_for(&rows, sam["id"].as_str().unwrap()).unwrap_or_else(|| panic!("{rows:?}"));
    assert!(lower(&row["reason"]).contains("mapping"), "{row}");
    assert_eq!(
        user(&app, sam["id"].as_str().unwrap()).await["status"],
        "preserved"
    );
    assert_eq!(
        azure_user(&app, &tenant, "zoë@contoso.test").await["status"],
        "active"
    );
}

// ---- users that are not the directory's ----------------------------------------------------

#[tokio::test]
async fn users_from_a_device_map_are_left_alone_by_a_sync() {
    both_dirs(|d, a| async move {
        let t = ldap_sync(&d, &a, &[]).await;
        set_settings(&t.app, json!({"auto_preserve_unmapped_users": true})).await;
        let amy = t.ou.add_user(UserSpec::new("amy")).await;
        let dup = t.ou.add_user(UserSpec::new("dup")).await;
        t.map_ou("sync", 10, None, "synced").await;
        // Two device-map users: one with dup's email, one the directory never heard of.
        let dup_mail = dup.mail.clone().unwrap();
        t.app
            .map(&format!(
                "{HEADER}{dup_mail},csvdup,WS-C1,serial-number,CSV-1,,\ncsv-only@corp.example.com,csvonly,WS-C2,serial-number,CSV-2,,\n"
            ))
            .await;
        let v4 = t.app.token().await;
        let (_, c1) = t.app.activate_ok(&activation(&v4, "CSV-1", "WS-C1", "csvdup")).await;
        let (_, c2) = t.app.activate_ok(&activation(&v4, "CSV-2", "WS-C2", "csvonly")).await;
        let before: Vec<Value> = vec![user(&t.app, c1["user_id"].as_str().unwrap()).await, user(&t.app, c2["user_id"].as_str().unwrap()).await];

        let run = sync(&t.app).await;
        assert_counts(&run, &[("imported", 1), ("preserved", 0), ("updated", 0), ("deleted", 0)]);
        assert!(user_by_email(&t.app, amy.mail.as_deref().unwrap()).await.is_some());
        let skipped = run_users(&t.app, &id(&run), "skipped").await;
        let row = skipped
            .iter()
            .find(|r| lower(&r["email"]) == dup_mail.to_lowercase() || r.to_string().to_lowercase().contains(&dup.login.to_lowercase()))
            .unwrap_or_else(|| panic!("dup skipped (its email is taken): {skipped:?}"));
        assert!(lower(&row["reason"]).contains("mail"), "{row}");
        for (b, act) in before.iter().zip([&c1, &c2]) {
            let now = user(&t.app, b["id"].as_str().unwrap()).await;
            assert_eq!(now, *b, "a device-map user is never touched");
            assert_eq!(now["source"], "device_map");
            assert_eq!(device_check(&t.app, act["device_credential"].as_str().unwrap()).await.0, StatusCode::OK);
        }
        assert_eq!(users(&t.app, None).await.len(), 3);
        t.ou.cleanup().await;
    })
    .await;
}

// ---- the command line and the scheduler ----------------------------------------------------

/// `imd --config <file> sync run --org <org> <args>` with a config file naming the test
/// server's data directory and database.
async fn cli_sync(app: &crate::helpers::TestApp, args: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("imd.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\ndatabase_url = {:?}\n\n[sync]\nscheduler = false\n",
            app.settings.data_dir.display().to_string(),
            app.settings.database_url()
        ),
    )
    .unwrap();
    tokio::process::Command::new(env!("CARGO_BIN_EXE_imd"))
        .arg("--config")
        .arg(&config)
        .args(["sync", "run", "--org", &app.org_id])
        .args(args)
        .env("IMD_LOG", "warn")
        .env_remove("IMD_MASTER_KEY")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap()
}

#[tokio::test]
async fn imd_sync_run_on_the_command_line_prints_the_report_and_exits_0() {
    let tenant = Tenant::fixture();
    let (app, _g) = azure_sync_app(&[], tenant.clone()).await;
    let out = cli_sync(&app, &["--dry-run"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "exit {:?}: {stdout} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let runs = app.list(RUNS).await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    let run = &runs[0];
    assert_eq!(
        (
            run["trigger"].clone(),
            run["dry_run"].clone(),
            run["status"].clone()
        ),
        (json!("cli"), json!(true), json!("completed")),
        "{run}"
    );
    assert!(
        stdout.contains(run["id"].as_str().unwrap()),
        "the report names the run: {stdout}"
    );
    assert!(
        stdout.contains("imported"),
        "the report has the counts: {stdout}"
    );
    assert!(
        users(&app, None).await.is_empty(),
        "a dry run imports nobody"
    );

    let out = cli_sync(&app, &[]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!users(&app, None).await.is_empty());
    let runs = app.list(RUNS).await;
    assert_eq!(
        (runs[0]["trigger"].clone(), runs[0]["dry_run"].clone()),
        (json!("cli"), json!(false))
    );

    // --as-of only with --dry-run: refused, no run.
    let as_of = server_time_in_days(&app, 46);
    let out = cli_sync(&app, &["--as-of", &as_of]).await;
    assert!(!out.status.success(), "--as-of without --dry-run must fail");
    let out = cli_sync(&app, &["--dry-run", "--as-of", &as_of]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(app.list(RUNS).await.len(), 3);
}

#[tokio::test]
async fn imd_sync_run_reaches_the_connector_through_the_server_that_holds_it() {
    let Some((d, a)) = writable(Kind::OpenLdap) else {
        return;
    };
    let t = ldap_sync(&d, &a, &[]).await;
    let amy = t.ou.add_user(UserSpec::new("amy")).await;
    t.map_ou("sync", 10, None, "synced").await;
    let out = cli_sync(&t.app, &[]).await;
    assert!(
        out.status.success(),
        "{} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let u = user_by_email(&t.app, amy.mail.as_deref().unwrap())
        .await
        .expect("amy imported");
    assert_eq!(u["source"], "ldap");
    assert_eq!(t.app.list(RUNS).await[0]["trigger"], "cli");
    t.ou.cleanup().await;
}

#[tokio::test]
async fn a_due_organization_is_synced_by_the_scheduler() {
    use imd::clock::Clock;
    // The scheduler on, looking every second.
    let app = spawn_app_with_scheduler().await;
    let g = StandIn::start(Tenant::fixture()).await;
    crate::imd_v5::configure(&app, &g, false).await;
    azure_staff_mapping(&app).await;
    let s = set_settings(&app, json!({"auto_sync_interval_hours": 1})).await;
    let next = imd::clock::parse_rfc3339(s["next_run_at"].as_str().unwrap()).unwrap();
    app.clock.advance((next - app.clock.now()).max(0) + 60);
    let due_from = app.clock.now();
    let started = Instant::now();
    let scheduled_since = |runs: &[Value]| -> Vec<Value> {
        runs.iter()
            .filter(|r| r["trigger"] == "schedule")
            .filter(|r| {
                r["started_at"]
                    .as_str()
                    .and_then(|t| imd::clock::parse_rfc3339(t).ok())
                    .is_some_and(|t| t >= due_from - 1)
            })
            .cloned()
            .collect()
    };
    let run = loop {
        let runs = app.list(RUNS).await;
        if let Some(r) = scheduled_since(&runs).first() {
            break r.clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no scheduled run once due: {runs:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let run = wait_run(&app, run["id"].as_str().unwrap()).await;
    assert_eq!(run["status"], "completed", "{run}");
    assert!(!users(&app, None).await.is_empty());
    let s = get_settings(&app).await;
    let at = |v: &Value| imd::clock::parse_rfc3339(v.as_str().unwrap_or_default()).unwrap();
    let (last, next) = (at(&s["last_run_at"]), at(&s["next_run_at"]));
    assert_eq!(last, at(&run["started_at"]), "{s} {run}");
    assert!(
        (3600..=3780).contains(&(next - last)),
        "an hour plus at most 5 % jitter after the last start: {s}"
    );
    // Not due again yet: no second scheduled run.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(scheduled_since(&app.list(RUNS).await).len(), 1);
}

#[tokio::test]
async fn azure_throttled_past_the_page_deadline_fails_the_run_and_preserves_nobody() {
    let tenant = Tenant::fixture();
    // A Graph page (retries included) must finish within 1.5 s.
    let app = sync_app(&[("sync.page_timeout_ms", "1500")]).await;
    let g = StandIn::start(tenant.clone()).await;
    crate::imd_v5::configure(&app, &g, false).await;
    azure_staff_mapping(&app).await;
    sync(&app).await;
    let sam = azure_user(&app, &tenant, "sam@contoso.test").await;
    assert_eq!(sam["status"], "active");

    // Disabled in Entra ID, but Graph throttles the delta with a Retry-After past the deadline.
    g.set_user_enabled("sam@contoso.test", false);
    g.throttle("delta", 1000, Some("30"));
    let failed = sync_with(&app, "").await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(
        failed["error"].is_string(),
        "the run says what failed: {failed}"
    );
    assert_counts(&failed, &[("preserved", 0), ("deleted", 0)]);
    assert_eq!(
        user(&app, sam["id"].as_str().unwrap()).await["status"],
        "active",
        "a run that failed part-way preserves nobody"
    );

    // Graph answers again: the next run converges.
    g.clear_faults();
    let run = sync(&app).await;
    assert_counts(&run, &[("preserved", 1)]);
    assert_eq!(
        user(&app, sam["id"].as_str().unwrap()).await["status"],
        "preserved"
    );
}

#[tokio::test]
async fn an_approval_leaves_alone_a_user_whose_status_changed_since_the_run() {
    use imd::clock::Clock;
    let tenant = Tenant::fixture();
    let (app, g) = azure_sync_app(&[], tenant.clone()).await;
    sync(&app).await;
    set_settings(
        &app,
        json!({"mass_change_threshold_min": 1, "mass_change_threshold_percent": 1}),
    )
    .await;
    let sam = azure_user(&app, &tenant, "sam@contoso.test").await;
    let carla = azure_user(&app, &tenant, "carla@contoso.test").await;
    g.set_user_enabled("sam@contoso.test", false);
    g.set_user_enabled("carla@contoso.test", false);
    let held = sync_with(&app, "").await;
    assert_eq!(held["status"], "needs_approval", "{held}");
    assert_eq!(held["held"]["preserve"], 2, "{held}");

    // After the run, carla's status changes (preserved and re-enabled again, as an earlier
    // approval and a real-time re-enable would): the approval must leave her alone.
    app.clock.advance(5);
    let carla_id = carla["id"].as_str().unwrap();
    for s in [
        imd::store::UserStatus::Preserved,
        imd::store::UserStatus::Active,
    ] {
        app.store
            .set_user_status(&app.org_id, carla_id, s, app.clock.now())
            .await
            .unwrap();
    }
    let r = app
        .admin_post(
            &format!("/api/v1/admin/sync-runs/{}/approve", id(&held)),
            &json!({}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let approved: Value = r.json().await.unwrap();
    assert_eq!(approved["status"], "approved", "{approved}");
    assert_counts(&approved, &[("preserved", 1)]);
    assert_eq!(
        user(&app, sam["id"].as_str().unwrap()).await["status"],
        "preserved"
    );
    assert_eq!(user(&app, carla_id).await["status"], "active");
}

#[tokio::test]
async fn a_batch_of_a_run_that_lost_its_lease_writes_nothing() {
    use imd::clock::Clock;
    let app = sync_app(&[]).await;
    let values = imd::store::SyncUserValues {
        email: "ghost@corp.example.com".into(),
        email_norm: "ghost@corp.example.com".into(),
        user_name: "ghost".into(),
        external_id: "0b5f3c1e-9a7d-4d6e-8f21-3c4b5a697d80".into(),
        source: "ldap",
        profile: "default".into(),
        storage_region: "default".into(),
        quota_bytes: None,
        mapping_id: None,
        attrs: Default::default(),
        keep_groups: false,
    };
    let mut lines = vec![None];
    let written = app
        .store
        .apply_sync_batch(
            &app.org_id,
            "a-run-without-the-lease",
            "sync:test",
            &[imd::store::SyncWrite::Import(values)],
            &mut lines,
            &[],
            app.clock.now(),
        )
        .await
        .unwrap();
    assert!(written.is_none(), "the batch is refused: {written:?}");
    assert!(
        users(&app, None).await.is_empty(),
        "and nothing was written"
    );
}
