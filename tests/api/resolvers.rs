//! The resolver seam with network resolvers that live only here: one that hangs, one that fails,
//! one that answers with a directory user. They plug in as IMD v2 through `Application::build_with`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;
use imd::domain::Email;
use imd::resolve::{
    DirectoryUser, LookupContext, Prepared, Resolution, ResolveContext, ResolveError, Resolver,
    bind_directory_user,
};
use imd::store::{UserStatus, WriteTx};
use imd_tokens::ImdVersion;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{HEADER, TestApp, activation, error_code, spawn_app_full};

#[allow(clippy::large_enum_variant)]
enum Behaviour {
    /// Never answers (a hung directory).
    Hang,
    Fail,
    /// Answers with this directory user for any login.
    Answer(DirectoryUser),
}

struct TestResolver {
    behaviour: std::sync::Mutex<Behaviour>,
    lookups: AtomicUsize,
}

impl TestResolver {
    fn new(b: Behaviour) -> Arc<TestResolver> {
        Arc::new(TestResolver {
            behaviour: std::sync::Mutex::new(b),
            lookups: AtomicUsize::new(0),
        })
    }
}

impl Resolver for TestResolver {
    fn name(&self) -> &'static str {
        "test-directory"
    }

    fn network_phase(&self) -> bool {
        true
    }

    fn lookup<'a>(
        &'a self,
        ctx: &'a LookupContext<'a>,
    ) -> BoxFuture<'a, Result<Prepared, ResolveError>> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            assert!(
                ctx.deadline > tokio::time::Instant::now(),
                "a deadline is given"
            );
            assert_eq!(
                ctx.claims.sub, ctx.org.id,
                "the verified claims name the organization"
            );
            let answer = match &*self.behaviour.lock().unwrap() {
                Behaviour::Hang => None,
                Behaviour::Fail => {
                    return Err(ResolveError::Unavailable("directory down".into()));
                }
                Behaviour::Answer(u) => Some(u.clone()),
            };
            match answer {
                Some(u) => Ok(Prepared::User(u)),
                None => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    unreachable!()
                }
            }
        })
    }

    fn resolve<'a>(
        &'a self,
        _tx: &'a mut dyn WriteTx,
        ctx: &'a ResolveContext<'a>,
        prepared: &'a Prepared,
    ) -> BoxFuture<'a, Result<Resolution, ResolveError>> {
        Box::pin(async move {
            match prepared {
                Prepared::User(u) => bind_directory_user(ctx.org, u, "test-directory"),
                Prepared::Nothing => Err(ResolveError::DeviceNotMapped),
            }
        })
    }
}

async fn app_with(resolver: Arc<TestResolver>) -> TestApp {
    spawn_app_full(
        tempfile::tempdir().unwrap(),
        &[
            ("resolvers.network_timeout_ms", "2500"),
            ("resolvers.network_max_in_flight", "2"),
        ],
        vec![(ImdVersion::V2, resolver as Arc<dyn Resolver>)],
    )
    .await
}

fn user(ext: &str, email: &str, login: &str) -> DirectoryUser {
    DirectoryUser {
        external_id: ext.into(),
        email: Email::parse(email).unwrap(),
        user_name: login.into(),
        enabled: true,
        attrs: None,
        assignment: None,
        note: None,
        also_known_as: None,
    }
}

#[tokio::test]
async fn a_hung_directory_neither_blocks_device_map_activations_nor_writes_anything() {
    let resolver = TestResolver::new(Behaviour::Hang);
    let app = app_with(resolver.clone()).await;
    let mut csv = String::from(HEADER);
    for i in 0..20 {
        csv.push_str(&format!(
            "u{i}@corp.example.com,u{i},WS-{i},serial-number,V4S{i},,\n"
        ));
    }
    app.map(&csv).await;
    let v4 = app.token().await;
    let v2 = app
        .token_with(json!({"version": "v2", "name": "directory"}))
        .await;

    // Six v2 activations against a directory that never answers, two allowed in flight...
    let hung: Vec<_> = (0..6)
        .map(|i| {
            let body = activation(&v2, &format!("V2S{i}"), &format!("PC-{i}"), "jdoe");
            let (client, url) = (app.client.clone(), app.url("/api/v1/activations"));
            tokio::spawn(async move { client.post(url).json(&body).send().await.unwrap() })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // ...while 20 v4 activations go through untouched, before the hung ones time out.
    for i in 0..20 {
        let (s, _) = app
            .activate_ok(&activation(
                &v4,
                &format!("V4S{i}"),
                &format!("WS-{i}"),
                &format!("u{i}"),
            ))
            .await;
        assert_eq!(s, StatusCode::CREATED);
    }
    assert!(
        hung.iter().filter(|h| !h.is_finished()).count() >= 2,
        "the v4 activations finished while the two hung look-ups were still waiting"
    );
    let mut codes = Vec::new();
    for h in hung {
        let r = h.await.unwrap();
        assert!(r.headers().contains_key("retry-after"));
        let (s, c, body) = error_code(r).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["error"]["retryable"], true);
        codes.push(c);
    }
    assert!(
        codes.iter().all(|c| c == "directory_unavailable"),
        "{codes:?}"
    );
    // Only two look-ups ran: the other four were refused at once, not queued.
    assert_eq!(resolver.lookups.load(Ordering::SeqCst), 2);
    let users = app.list("/api/v1/admin/users").await;
    let devices = app.list("/api/v1/admin/devices").await;
    assert_eq!(
        (users.len(), devices.len()),
        (20, 20),
        "nothing of the v2 attempts was written"
    );
}

#[tokio::test]
async fn a_failing_directory_is_a_retryable_503_and_writes_nothing() {
    let resolver = TestResolver::new(Behaviour::Fail);
    let app = app_with(resolver.clone()).await;
    let v2 = app.token_with(json!({"version": "v2", "name": "d"})).await;
    let (s, c, body) = error_code(app.activate(&activation(&v2, "S1", "PC-1", "jdoe")).await).await;
    assert_eq!(
        (s, c.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "directory_unavailable")
    );
    assert_eq!(body["error"]["retryable"], true);
    assert!(app.list("/api/v1/admin/users").await.is_empty());
    assert!(app.list("/api/v1/admin/devices").await.is_empty());
}

#[tokio::test]
async fn a_revoked_token_never_reaches_the_directory() {
    let resolver = TestResolver::new(Behaviour::Answer(user(
        "g-1",
        "jdoe@corp.example.com",
        "jdoe",
    )));
    let app = app_with(resolver.clone()).await;
    let minted: Value = app
        .mint(&json!({"version": "v2", "name": "d"}))
        .await
        .json()
        .await
        .unwrap();
    let id = minted["id"].as_str().unwrap();
    let token = minted["token"].as_str().unwrap();
    let r = app
        .admin_post(&format!("/api/v1/admin/tokens/{id}/revoke"), &json!({}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let (s, c, _) = error_code(app.activate(&activation(token, "S1", "PC-1", "jdoe")).await).await;
    assert_eq!((s, c.as_str()), (StatusCode::UNAUTHORIZED, "token_revoked"));
    assert_eq!(resolver.lookups.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn directory_users_are_matched_by_their_immutable_id_first() {
    let resolver = TestResolver::new(Behaviour::Answer(user(
        "guid-7",
        "jdoe@corp.example.com",
        "jdoe",
    )));
    let app = app_with(resolver.clone()).await;
    let v2 = app.token_with(json!({"version": "v2", "name": "d"})).await;
    let (s, first) = app
        .activate_ok(&activation(&v2, "S1", "PC-1", "jdoe"))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(first["user_created"], true);
    // The person is renamed in the directory: same immutable id, new email and login.
    *resolver.behaviour.lock().unwrap() =
        Behaviour::Answer(user("guid-7", "jane.doe@corp.example.com", "jane.doe"));
    let (_, second) = app
        .activate_ok(&activation(&v2, "S2", "PC-2", "jane.doe"))
        .await;
    assert_eq!(second["user_created"], false);
    assert_eq!(
        second["user_id"], first["user_id"],
        "one user, found by external id"
    );
    let users = app.list("/api/v1/admin/users").await;
    assert_eq!(users.len(), 1);
    assert_eq!(users[0]["external_id"], "guid-7");
    assert_eq!(users[0]["source"], "test-directory");
}

#[tokio::test]
async fn preserved_and_deleted_users_devices_are_refused() {
    let resolver = TestResolver::new(Behaviour::Answer(user("g-9", "p@corp.example.com", "p")));
    let app = app_with(resolver.clone()).await;
    let v2 = app.token_with(json!({"version": "v2", "name": "d"})).await;
    let (_, first) = app.activate_ok(&activation(&v2, "S1", "PC-1", "p")).await;
    let user_id = first["user_id"].as_str().unwrap();
    let now = imd::clock::Clock::now(&app.clock);
    for (status, code) in [
        (UserStatus::Preserved, "user_preserved"),
        (UserStatus::Deleted, "user_deleted"),
    ] {
        app.store
            .set_user_status(&app.org_id, user_id, status, now)
            .await
            .unwrap();
        // A repeat of the known device and a new device of that user: both refused.
        for serial in ["S1", "S9"] {
            let (s, c, _) =
                error_code(app.activate(&activation(&v2, serial, "PC-1", "p")).await).await;
            assert_eq!((s, c.as_str()), (StatusCode::FORBIDDEN, code), "{serial}");
        }
    }
    app.store
        .set_user_status(&app.org_id, user_id, UserStatus::Active, now)
        .await
        .unwrap();
    let (s, _) = app.activate_ok(&activation(&v2, "S1", "PC-1", "p")).await;
    assert_eq!(s, StatusCode::OK, "an active user's device is back");
}
