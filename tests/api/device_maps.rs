//! Device-map CSV uploads and the JSON mapping API: formats, validation, modes, atomicity.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{HEADER, activation, device_map, error_code, spawn_app, spawn_app_with};

async fn mapping_count(app: &crate::helpers::TestApp) -> usize {
    app.list("/api/v1/admin/device-mappings?limit=1000")
        .await
        .len()
}

#[tokio::test]
async fn accepts_bom_crlf_quoting_and_any_column_order() {
    let app = spawn_app().await;
    let csv = "\u{feff}DeviceIdentifier,EMAILID,username,devicename,deviceIdentifierType\r\n\
               S1,a@corp.example.com,\"Doe, Jane\",\"WS \"\"1\"\"\",serial-number\r\n\
               S2,b@corp.example.com,b,WS-2,SERIAL-NUMBER\r\n";
    let body = app.map(csv).await;
    assert_eq!(body["rows_total"], 2);
    assert_eq!(body["created"], 2);
    let m = app
        .list(
            "/api/v1/admin/device-mappings?deviceIdentifierType=serial-number&deviceIdentifier=s1",
        )
        .await;
    assert_eq!(m.len(), 1);
    assert_eq!(m[0]["userName"], "Doe, Jane");
    assert_eq!(m[0]["deviceName"], "WS \"1\"");
}

#[tokio::test]
async fn unknown_or_missing_columns_are_rejected_by_name() {
    let app = spawn_app().await;
    let (s, c, body) = error_code(
        app.upload(
            "emailID,userName,deviceName,deviceIdentifierType,deviceIdentifier,colour\n",
            "",
        )
        .await,
    )
    .await;
    assert_eq!(
        (s, c.as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "device_map_invalid")
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("colour"),
        "{body}"
    );
    let (_, _, body) = error_code(app.upload("emailID,userName,deviceName\n", "").await).await;
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("deviceIdentifierType") && msg.contains("deviceIdentifier"),
        "{msg}"
    );
}

#[tokio::test]
async fn one_bad_row_applies_nothing_and_every_bad_row_is_listed() {
    let app = spawn_app().await;
    app.map(&format!(
        "{HEADER}keep@corp.example.com,keep,WS-0,serial-number,KEEP,,\n"
    ))
    .await;
    let csv = format!(
        "{HEADER}a@corp.example.com,a,WS-1,serial-number,S1,,\n\
         not-an-email,b,WS-2,serial-number,S2,,\n\
         c@corp.example.com,c,WS-3,mac-address,S3,,\n\
         d@corp.example.com,d,WS-4,uuid,not-a-uuid,,\n\
         e@corp.example.com,e,WS-5,serial-number,s1,,\n\
         f@corp.example.com,f,WS-6,serial-number,S6,,EVERYTHING\n"
    );
    let r = app.upload(&csv, "").await;
    let (s, c, body) = error_code(r).await;
    assert_eq!(
        (s, c.as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "device_map_invalid")
    );
    let errors = body["error"]["errors"].as_array().unwrap();
    let lines: Vec<u64> = errors.iter().map(|e| e["line"].as_u64().unwrap()).collect();
    assert_eq!(lines, vec![3, 4, 5, 6, 7]);
    assert_eq!(errors[0]["column"], "emailID");
    assert_eq!(errors[1]["column"], "deviceIdentifierType");
    assert_eq!(errors[2]["column"], "deviceIdentifier");
    assert!(
        errors[3]["error"].as_str().unwrap().contains("duplicate"),
        "{}",
        errors[3]
    );
    assert_eq!(body["error"]["rows_invalid"], 5);
    assert_eq!(
        mapping_count(&app).await,
        1,
        "nothing from the bad upload was applied"
    );
}

#[tokio::test]
async fn partial_mode_applies_good_rows_and_csv_accept_returns_failing_rows() {
    let app = spawn_app().await;
    let csv = format!(
        "{HEADER}a@corp.example.com,a,WS-1,serial-number,S1,,\nbad,b,WS-2,serial-number,S2,,\n"
    );
    let r = app.upload(&csv, "?mode=partial").await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        (body["created"].as_u64(), body["rows_invalid"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(mapping_count(&app).await, 1);

    let r = app
        .client
        .post(app.url("/api/v1/admin/device-maps"))
        .bearer_auth(&app.admin_key)
        .header("Content-Type", "text/csv")
        .header("Accept", "text/csv")
        .body(csv.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let text = r.text().await.unwrap();
    let mut rdr = csv::Reader::from_reader(text.as_bytes());
    let headers: Vec<String> = rdr.headers().unwrap().iter().map(str::to_string).collect();
    assert_eq!(headers.last().unwrap(), "error");
    let rows: Vec<csv::StringRecord> = rdr.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 1);
    assert_eq!(&rows[0][0], "bad");
}

#[tokio::test]
async fn dry_run_validates_without_writing() {
    let app = spawn_app().await;
    let r = app.upload(&device_map(3), "?dry_run=true").await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["rows_valid"], 3);
    assert_eq!(body["applied"], false);
    assert_eq!(mapping_count(&app).await, 0);
}

#[tokio::test]
async fn reupload_updates_pending_mappings_in_place() {
    let app = spawn_app().await;
    app.map(&format!(
        "{HEADER}a@corp.example.com,a,WS-1,serial-number,S1,,\n"
    ))
    .await;
    let body = app.map(&format!("{HEADER}b@corp.example.com,b,WS-1b,serial-number,s1,,\nc@corp.example.com,c,WS-3,hostname,WS-3.corp.example.com,,\n")).await;
    assert_eq!(
        (body["created"].as_u64(), body["updated"].as_u64()),
        (Some(1), Some(1))
    );
    let m = app
        .list(
            "/api/v1/admin/device-mappings?deviceIdentifierType=serial-number&deviceIdentifier=S1",
        )
        .await;
    assert_eq!(m.len(), 1);
    assert_eq!(m[0]["emailID"], "b@corp.example.com");
    // The hostname mapping matches the short, case-insensitive name.
    let token = app.token().await;
    let mut req = activation(&token, "", "ws-3", "c");
    req["device"]["serial"] = Value::Null;
    let (s, _) = app.activate_ok(&req).await;
    assert_eq!(s, StatusCode::CREATED);
}

#[tokio::test]
async fn old_device_name_must_exist_for_an_existing_user() {
    let app = spawn_app().await;
    app.map(&format!(
        "{HEADER}a@corp.example.com,a,WS-1,serial-number,S1,,\n"
    ))
    .await;
    let token = app.token().await;
    app.activate_ok(&activation(&token, "S1", "WS-1", "a"))
        .await;
    let (s, c, body) = error_code(
        app.upload(
            &format!("{HEADER}a@corp.example.com,a,WS-2,serial-number,S2,NO-SUCH-DEVICE,ALL\n"),
            "",
        )
        .await,
    )
    .await;
    assert_eq!(
        (s, c.as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "device_map_invalid")
    );
    assert_eq!(body["error"]["errors"][0]["column"], "oldDeviceName");
    // The existing device by name (case-insensitive) is fine; so is a user that does not exist yet.
    app.map(&format!("{HEADER}a@corp.example.com,a,WS-2,serial-number,S2,ws-1,ALL\nnew@corp.example.com,n,WS-9,serial-number,S9,WHATEVER,\n")).await;
}

#[tokio::test]
async fn ten_thousand_rows_upload_and_activate() {
    let app = spawn_app().await;
    let body = app.map(&device_map(10_000)).await;
    assert_eq!(body["created"], 10_000);
    assert_eq!(
        app.store.count_pending_mappings(&app.org_id).await.unwrap(),
        10_000
    );
    let token = app.token().await;
    let (s, _) = app
        .activate_ok(&activation(&token, "SER009999", "WS-09999", "user9999"))
        .await;
    assert_eq!(s, StatusCode::CREATED);
}

#[tokio::test]
async fn oversized_upload_is_refused_and_changes_nothing() {
    let app = spawn_app_with(&[("limits.device_map_bytes", "1000")]).await;
    let (s, c, _) = error_code(app.upload(&device_map(100), "").await).await;
    assert_eq!(
        (s, c.as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
    // Without a declared length (chunked), the limit is enforced while reading.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = device_map(100)
        .into_bytes()
        .chunks(100)
        .map(|c| Ok(c.to_vec()))
        .collect();
    let r = app
        .client
        .post(app.url("/api/v1/admin/device-maps"))
        .bearer_auth(&app.admin_key)
        .header("Content-Type", "text/csv")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    let (s, c, _) = error_code(r).await;
    assert_eq!(
        (s, c.as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
    assert_eq!(mapping_count(&app).await, 0);
}

#[tokio::test]
async fn wrong_content_type_and_bad_flags_are_refused() {
    let app = spawn_app().await;
    let r = app
        .admin_post("/api/v1/admin/device-maps", &json!({"x": 1}))
        .await;
    let (s, c, _) = error_code(r).await;
    assert_eq!(
        (s, c.as_str()),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
    );
    let (s, c, _) = error_code(app.upload(&device_map(1), "?mode=some").await).await;
    assert_eq!(
        (s, c.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    let (s, c, _) = error_code(app.upload(&device_map(1), "?dry_run=maybe").await).await;
    assert_eq!(
        (s, c.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
}

#[tokio::test]
async fn json_mapping_api_creates_lists_and_deletes() {
    let app = spawn_app().await;
    let one = json!({"emailID": "a@corp.example.com", "userName": "a", "deviceName": "MAC-1",
                     "deviceIdentifierType": "serial-number", "deviceIdentifier": "C02XK0ABJGH5"});
    let r = app.admin_post("/api/v1/admin/device-mappings", &one).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let created: Value = r.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_string();

    let many = json!([
        {"emailID": "b@corp.example.com", "userName": "b", "deviceName": "MAC-2", "deviceIdentifierType": "serial-number", "deviceIdentifier": "B2"},
        {"emailID": "c@corp.example.com", "userName": "c", "deviceName": "MAC-3", "deviceIdentifierType": "uuid", "deviceIdentifier": "{0E3A1C22-59A4-4E48-8C38-7E5C9D0B2A11}"}
    ]);
    let r = app.admin_post("/api/v1/admin/device-mappings", &many).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        r.json::<Value>().await.unwrap()["items"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    let bad = json!([{"emailID": "x"}, {"emailID": "d@corp.example.com", "userName": "d", "deviceName": "D", "deviceIdentifierType": "serial-number", "deviceIdentifier": "D1", "extra": 1}]);
    let (s, c, body) =
        error_code(app.admin_post("/api/v1/admin/device-mappings", &bad).await).await;
    assert_eq!(
        (s, c.as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "device_map_invalid")
    );
    assert_eq!(body["error"]["errors"].as_array().unwrap().len(), 2);
    assert_eq!(
        mapping_count(&app).await,
        3,
        "an invalid batch stores nothing"
    );

    let by_email = app
        .list("/api/v1/admin/device-mappings?emailID=B@corp.example.com")
        .await;
    assert_eq!(by_email.len(), 1);
    let r = app
        .delete_as(
            &format!("/api/v1/admin/device-mappings/{id}"),
            &app.admin_key,
        )
        .await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = app
        .delete_as(
            &format!("/api/v1/admin/device-mappings/{id}"),
            &app.admin_key,
        )
        .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(mapping_count(&app).await, 2);
}

/// Killing the server in the middle of applying a large upload leaves the previous mappings
/// exactly as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_server_mid_upload_leaves_the_previous_state() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap().to_string();
    // On PostgreSQL the servers share a database of this test's own.
    crate::helpers::prepare_database(dir.path()).await;
    let pg = crate::helpers::database_url_of(dir.path());
    let mut db_args = vec!["--data-dir".to_string(), data.clone()];
    if let Some(url) = &pg {
        db_args.extend(["--database-url".to_string(), url.clone()]);
    }
    let bin = env!("CARGO_BIN_EXE_imd");
    let org = std::process::Command::new(bin)
        .args(["org", "create", "--name", "Kill", "--json"])
        .args(&db_args)
        .output()
        .unwrap();
    assert!(
        org.status.success(),
        "{}",
        String::from_utf8_lossy(&org.stderr)
    );
    let org: Value = serde_json::from_slice(&org.stdout).unwrap();
    let key = org["admin_key"].as_str().unwrap().to_string();

    /// Kills the server even when an assertion fails first.
    struct Server(std::process::Child);
    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let start = || {
        let mut child = std::process::Command::new(bin)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(&db_args)
            .env("IMD_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line.split_whitespace().nth(3).unwrap().to_string();
        (Server(child), format!("http://{addr}"))
    };
    let (child, base) = start();
    let client = reqwest::Client::new();
    let upload = |n: usize, prefix: &'static str| {
        let mut s = String::from(HEADER);
        for i in 0..n {
            s.push_str(&format!(
                "{prefix}{i}@corp.example.com,u{i},WS-{i},serial-number,{prefix}{i:07},,\n"
            ));
        }
        client
            .post(format!("{base}/api/v1/admin/device-maps"))
            .bearer_auth(&key)
            .header("Content-Type", "text/csv")
            .body(s)
    };
    let r = upload(100, "old").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let big = 200_000;
    // How much the apply transaction has written, uncommitted: SQLite's WAL, or the size of
    // PostgreSQL's mappings table (uncommitted rows take space too).
    let wal = std::path::Path::new(&data).join("imd.db-wal");
    let pg_pool = match &pg {
        Some(url) => Some(sqlx::PgPool::connect(url).await.unwrap()),
        None => None,
    };
    let written = || async {
        match &pg_pool {
            Some(p) => {
                sqlx::query_scalar::<_, i64>("SELECT pg_total_relation_size('device_mappings')")
                    .fetch_one(p)
                    .await
                    .unwrap() as u64
            }
            None => std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0),
        }
    };
    let baseline = written().await;
    let pending = tokio::spawn(upload(big, "new").send());
    // Kill once the apply transaction is visibly writing (megabytes), well before it can commit.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while written().await < baseline + 4 * 1024 * 1024 {
        assert!(
            !pending.is_finished(),
            "the upload finished before it could be interrupted"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the apply never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    drop(child);
    let _ = pending.await;

    let (_child, base) = start();
    let count: Value = client
        .get(format!("{base}/api/v1/admin/device-mappings?limit=1000"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let items = count["items"].as_array().unwrap();
    let old = items
        .iter()
        .filter(|m| m["deviceIdentifier"].as_str().unwrap().starts_with("old"))
        .count();
    assert_eq!(old, 100, "the previous mappings are intact");
    let url = pg.unwrap_or_else(|| format!("sqlite://{data}/imd.db"));
    let n: i64 = if url.starts_with("postgres") {
        let db = sqlx::PgPool::connect(&url).await.unwrap();
        sqlx::query_scalar("SELECT COUNT(*) FROM device_mappings")
            .fetch_one(&db)
            .await
            .unwrap()
    } else {
        let db = sqlx::SqlitePool::connect(&url).await.unwrap();
        sqlx::query_scalar("SELECT COUNT(*) FROM device_mappings")
            .fetch_one(&db)
            .await
            .unwrap()
    };
    assert_eq!(n, 100, "nothing of the interrupted upload is visible");
}

#[tokio::test]
async fn the_shipped_example_device_map_is_valid() {
    let app = spawn_app().await;
    let csv = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/device-map-example.csv"
    ))
    .unwrap();
    let body = app.map(&csv).await;
    assert_eq!(body["rows_invalid"], 0);
    assert_eq!(body["created"], 4);
}

#[tokio::test]
async fn consumed_mappings_are_kept_for_audit() {
    let app = spawn_app().await;
    app.map(&format!(
        "{HEADER}a@corp.example.com,a,WS-1,serial-number,S1,,\n"
    ))
    .await;
    let token = app.token().await;
    app.activate_ok(&activation(&token, "S1", "WS-1", "a"))
        .await;
    let m = app
        .list("/api/v1/admin/device-mappings?status=consumed")
        .await;
    let id = m[0]["id"].as_str().unwrap();
    let r = app
        .delete_as(
            &format!("/api/v1/admin/device-mappings/{id}"),
            &app.admin_key,
        )
        .await;
    let (s, c, _) = error_code(r).await;
    assert_eq!((s, c.as_str()), (StatusCode::CONFLICT, "conflict"));
    assert_eq!(
        app.list("/api/v1/admin/device-mappings?status=consumed")
            .await
            .len(),
        1
    );
}

#[tokio::test]
async fn csv_report_of_a_clean_upload_is_the_header_with_counts_in_headers() {
    let app = spawn_app().await;
    let r = app
        .client
        .post(app.url("/api/v1/admin/device-maps"))
        .bearer_auth(&app.admin_key)
        .header("Content-Type", "text/csv")
        .header("Accept", "text/csv")
        .body(device_map(3))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-imd-created"], "3");
    assert_eq!(r.headers()["x-imd-rows-invalid"], "0");
    assert_eq!(r.headers()["x-imd-applied"], "1");
    let text = r.text().await.unwrap();
    assert_eq!(
        csv::Reader::from_reader(text.as_bytes()).records().count(),
        0
    );
    assert_eq!(mapping_count(&app).await, 3);
}

#[tokio::test]
async fn json_mappings_check_old_device_names_and_report_every_problem_by_index() {
    let app = spawn_app().await;
    app.map(&format!(
        "{HEADER}a@corp.example.com,a,WS-1,serial-number,S1,,\n"
    ))
    .await;
    let token = app.token().await;
    app.activate_ok(&activation(&token, "S1", "WS-1", "a"))
        .await;
    let batch = json!([
        {"emailID": "x", "userName": "x"},
        {"emailID": "a@corp.example.com", "userName": "a", "deviceName": "WS-2", "deviceIdentifierType": "serial-number", "deviceIdentifier": "S2", "oldDeviceName": "NO-SUCH"},
        {"emailID": "a@corp.example.com", "userName": "a", "deviceName": "WS-3", "deviceIdentifierType": "serial-number", "deviceIdentifier": "S3", "oldDeviceName": "ws-1", "restoreData": "ALL"}
    ]);
    let (s, c, body) = error_code(
        app.admin_post("/api/v1/admin/device-mappings", &batch)
            .await,
    )
    .await;
    assert_eq!(
        (s, c.as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "device_map_invalid")
    );
    let errors = body["error"]["errors"].as_array().unwrap();
    let indices: Vec<u64> = errors
        .iter()
        .map(|e| e["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indices, vec![0, 1]);
    assert_eq!(errors[1]["errors"][0]["field"], "oldDeviceName");
    assert_eq!(
        app.list("/api/v1/admin/device-mappings?status=pending")
            .await
            .len(),
        0
    );
    // The valid one alone is stored.
    let r = app
        .admin_post("/api/v1/admin/device-mappings", &batch[2])
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.json::<Value>().await.unwrap()["oldDeviceName"], "ws-1");
}

#[tokio::test]
async fn csv_and_json_media_types_are_case_insensitive() {
    let app = spawn_app().await;
    let post = |ct: &'static str, accept: Option<&'static str>, body: String| {
        let mut r = app
            .client
            .post(app.url("/api/v1/admin/device-maps"))
            .bearer_auth(&app.admin_key)
            .header("Content-Type", ct);
        if let Some(a) = accept {
            r = r.header("Accept", a);
        }
        r.body(body).send()
    };
    let r = post("Text/CSV", None, device_map(2)).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    let r = post("TEXT/csv; Charset=UTF-8", None, device_map(3))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    let r = post("Application/CSV", None, device_map(1)).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(mapping_count(&app).await, 3);
    // The failure report is chosen by Accept in any case too.
    let r = post("Text/CSV", Some("Text/CSV"), device_map(1))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    // Not CSV, whatever the case.
    for ct in ["Text/Plain", "text/csvx", "Application/JSON"] {
        let (s, c, _) = error_code(post(ct, None, device_map(1)).await.unwrap()).await;
        assert_eq!(
            (s, c.as_str()),
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            "{ct}"
        );
    }
    // The JSON mapping API (actix's JSON extractor).
    let one = json!({"emailID": "j@corp.example.com", "userName": "j", "deviceName": "MAC-J",
                     "deviceIdentifierType": "serial-number", "deviceIdentifier": "J1"});
    for (ct, id) in [
        ("Application/JSON", "J1"),
        ("application/json; charset=UTF-8", "J2"),
    ] {
        let mut body = one.clone();
        body["deviceIdentifier"] = json!(id);
        let r = app
            .client
            .post(app.url("/api/v1/admin/device-mappings"))
            .bearer_auth(&app.admin_key)
            .header("Content-Type", ct)
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "{ct}");
    }
}

/// A header, one good row, a row whose quote is never closed, then `tail` more good rows.
fn map_with_unterminated_quote(tail: usize) -> String {
    let mut s = format!(
        "{HEADER}a@corp.example.com,a,WS-A,serial-number,SA,,\n\
         b@corp.example.com,\"Bob,WS-B,serial-number,SB,,\n"
    );
    for i in 0..tail {
        s.push_str(&format!(
            "user{i}@corp.example.com,user{i},WS-{i:05},serial-number,SER{i:06},,\n"
        ));
    }
    s
}

#[tokio::test]
async fn an_unterminated_quote_refuses_the_upload_naming_its_line() {
    let app = spawn_app().await;
    // About 3 MB after the broken record.
    let csv = map_with_unterminated_quote(50_000);
    assert!(csv.len() > 3_000_000);
    for query in ["", "?mode=partial", "?dry_run=true"] {
        let (s, c, body) = error_code(app.upload(&csv, query).await).await;
        assert_eq!(
            (s, c.as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, "device_map_invalid"),
            "{query} {body}"
        );
        let err = &body["error"];
        assert_eq!(
            err["message"],
            "the file cannot be read past line 3: the record starting there is longer than 65536 \
             bytes (a quote that is never closed?); nothing was applied",
            "{query}"
        );
        assert_eq!(err["stopped_at_line"], 3);
        assert_eq!(
            (err["rows_total"].as_u64(), err["rows_invalid"].as_u64()),
            (Some(2), Some(1))
        );
        let errors = err["errors"].as_array().unwrap();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0]["line"], 3);
        assert_eq!(errors[0]["column"], Value::Null);
        assert!(
            errors[0]["error"]
                .as_str()
                .unwrap()
                .starts_with("the record starting on line 3 is longer than 65536 bytes"),
            "{}",
            errors[0]
        );
        // Not even the good row before the break was applied, in partial mode either.
        assert_eq!(mapping_count(&app).await, 0, "{query}");
    }
    // The failure report says the same, one row for the broken record.
    let r = app
        .client
        .post(app.url("/api/v1/admin/device-maps?mode=partial"))
        .bearer_auth(&app.admin_key)
        .header("Content-Type", "text/csv")
        .header("Accept", "text/csv")
        .body(csv)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.headers()["x-imd-applied"], "0");
    let text = r.text().await.unwrap();
    let mut rdr = csv::Reader::from_reader(text.trim_start_matches('\u{feff}').as_bytes());
    let rows: Vec<csv::StringRecord> = rdr.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 1);
    assert!(
        rows[0][7].starts_with("the record starting on line 3"),
        "{:?}",
        rows[0]
    );
    // The same file with the quote closed is fine.
    let fixed = map_with_unterminated_quote(10).replace("\"Bob,", "\"Bob\",");
    app.map(&fixed).await;
    assert_eq!(mapping_count(&app).await, 12);
}
