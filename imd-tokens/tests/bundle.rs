//! Deployment bundles: golden files, parse-back of every format, validation,
//! escaping edge cases, zip and directory output, and the CLI.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use imd_tokens::bundle::{self, Bundle, BundleError, BundleOptions, escape};
use imd_tokens::{Claims, ImdVersion, SigningKey};

const NOW: i64 = 1_750_000_000; // 2025-06-15T15:06:40Z
const DAY: i64 = 86_400;
const ISS: &str = "https://imd.example.com";
const NS: &str = "http://schemas.microsoft.com/GroupPolicy/2006/07/PolicyDefinitions";

/// A fixed Ed25519 key: PKCS#8 v1 wrapping the seed 0x00..0x1f.
fn fixed_key() -> SigningKey {
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend(0u8..32);
    SigningKey::from_pkcs8("golden-2025", &der).unwrap()
}

fn token_with(iss: &str, exp: Option<i64>) -> String {
    fixed_key()
        .sign(&Claims::new(
            iss,
            "org-7",
            "tok-9",
            ImdVersion::V5,
            NOW - 60,
            exp,
        ))
        .unwrap()
}

fn golden_token() -> String {
    token_with(ISS, Some(NOW + 365 * DAY))
}

fn opts() -> BundleOptions {
    BundleOptions {
        now: NOW,
        ..BundleOptions::default()
    }
}

fn golden_bundle() -> Bundle {
    bundle::build(&golden_token(), &opts()).unwrap()
}

fn text(b: &Bundle, path: &str) -> String {
    String::from_utf8(b.file(path).unwrap().contents.clone()).unwrap()
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn files_under(dir: &Path, prefix: &str, out: &mut BTreeSet<String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let rel = format!("{prefix}{}", e.file_name().to_string_lossy());
        if e.file_type().unwrap().is_dir() {
            files_under(&e.path(), &format!("{rel}/"), out);
        } else {
            out.insert(rel);
        }
    }
}

#[test]
fn golden_files_match_byte_for_byte() {
    let b = golden_bundle();
    let dir = golden_dir();
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        if dir.exists() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
        bundle::write_dir(&b, &dir).unwrap();
    }
    let mut on_disk = BTreeSet::new();
    files_under(&dir, "", &mut on_disk);
    let expected: BTreeSet<String> = b.files.iter().map(|f| f.path.clone()).collect();
    assert_eq!(
        on_disk, expected,
        "golden file set differs; rerun with UPDATE_GOLDEN=1"
    );
    for f in &b.files {
        let golden = std::fs::read(dir.join(&f.path)).unwrap();
        assert!(
            golden == f.contents,
            "{} differs from tests/golden; rerun with UPDATE_GOLDEN=1 and review the diff",
            f.path
        );
    }
}

#[test]
fn bundle_metadata_and_file_list() {
    let b = golden_bundle();
    assert_eq!(b.server, ISS);
    assert_eq!(b.expires_at, Some(NOW + 365 * DAY));
    assert!(b.warnings.is_empty(), "{:?}", b.warnings);
    let paths: Vec<&str> = b.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "imd.admx",
            "en-US/imd.adml",
            "imd-token.reg",
            "Install-Imd.ps1",
            "install.cmd",
            "imd.mobileconfig",
            "imd.plist",
            "imd-intune.plist",
            "README.txt"
        ]
    );
    let token = golden_token();
    for f in &b.files {
        assert!(!f.path.contains(&token) && !f.path.contains("example"));
    }
    // Same input, same bytes.
    assert_eq!(b, golden_bundle());
}

fn attr<'a>(n: roxmltree::Node<'a, '_>, name: &str) -> &'a str {
    n.attribute(name)
        .unwrap_or_else(|| panic!("<{}> has no {name}", n.tag_name().name()))
}

/// `$(string.X)` → `X`.
fn reference<'a>(value: &'a str, kind: &str) -> &'a str {
    value
        .strip_prefix(&format!("$({kind}."))
        .and_then(|v| v.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{value:?} is not a $({kind}.…) reference"))
}

#[test]
fn admx_and_adml_parse_and_resolve() {
    let b = golden_bundle();
    let admx_text = text(&b, "imd.admx");
    let adml_text = text(&b, "en-US/imd.adml");
    let admx = roxmltree::Document::parse(&admx_text).unwrap();
    let adml = roxmltree::Document::parse(&adml_text).unwrap();

    let root = admx.root_element();
    assert_eq!(root.tag_name().name(), "policyDefinitions");
    assert_eq!(root.tag_name().namespace(), Some(NS));
    assert_eq!(attr(root, "revision"), "1.0");
    assert_eq!(attr(root, "schemaVersion"), "1.0");
    let children: Vec<&str> = root
        .children()
        .filter(|n| n.is_element())
        .map(|n| n.tag_name().name())
        .collect();
    assert_eq!(
        children,
        [
            "policyNamespaces",
            "resources",
            "supportedOn",
            "categories",
            "policies"
        ]
    );
    let target = admx
        .descendants()
        .find(|n| n.has_tag_name((NS, "target")))
        .unwrap();
    assert_eq!(attr(target, "namespace"), "Imd.Policies.IMD");
    let resources = admx
        .descendants()
        .find(|n| n.has_tag_name((NS, "resources")))
        .unwrap();
    assert_eq!(attr(resources, "minRequiredRevision"), "1.0");

    // The ADML.
    let aroot = adml.root_element();
    assert_eq!(aroot.tag_name().name(), "policyDefinitionResources");
    assert_eq!(attr(aroot, "revision"), "1.0");
    let strings: BTreeMap<&str, &str> = adml
        .descendants()
        .filter(|n| n.has_tag_name((NS, "string")))
        .map(|n| (attr(n, "id"), n.text().unwrap_or("")))
        .collect();
    assert!(
        adml.descendants()
            .any(|n| n.has_tag_name((NS, "stringTable"))
                && n.parent().unwrap().has_tag_name((NS, "resources")))
    );
    let presentations: BTreeMap<&str, roxmltree::Node> = adml
        .descendants()
        .filter(|n| n.has_tag_name((NS, "presentation")))
        .map(|n| (attr(n, "id"), n))
        .collect();

    // Every $(string.*) in the ADMX resolves.
    let mut referenced = 0;
    for n in admx.descendants().filter(|n| n.is_element()) {
        for a in n.attributes() {
            if a.value().starts_with("$(string.") {
                let id = reference(a.value(), "string");
                assert!(strings.contains_key(id), "string {id} missing from ADML");
                referenced += 1;
            }
        }
    }
    assert_eq!(referenced, 6); // supportedOn, category, 2 × (displayName, explainText)

    let category = admx
        .descendants()
        .find(|n| n.has_tag_name((NS, "category")))
        .unwrap();
    let category_name = attr(category, "name");
    let supported = admx
        .descendants()
        .find(|n| n.has_tag_name((NS, "definition")))
        .unwrap();

    let policies: Vec<_> = admx
        .descendants()
        .filter(|n| n.has_tag_name((NS, "policy")))
        .collect();
    assert_eq!(policies.len(), 2);
    let mut seen = BTreeMap::new();
    for p in policies {
        assert_eq!(attr(p, "class"), "Machine");
        assert_eq!(attr(p, "key"), r"Software\Policies\Imd\IMD");
        let display = strings[reference(attr(p, "displayName"), "string")];
        let parent = p
            .children()
            .find(|n| n.has_tag_name((NS, "parentCategory")))
            .unwrap();
        assert_eq!(attr(parent, "ref"), category_name);
        let sup = p
            .children()
            .find(|n| n.has_tag_name((NS, "supportedOn")))
            .unwrap();
        assert_eq!(attr(sup, "ref"), attr(supported, "name"));

        let text_el = p
            .descendants()
            .find(|n| n.has_tag_name((NS, "text")))
            .unwrap();
        let pres = presentations[reference(attr(p, "presentation"), "presentation")];
        let text_box = pres
            .children()
            .find(|n| n.has_tag_name((NS, "textBox")))
            .unwrap();
        assert_eq!(attr(text_box, "refId"), attr(text_el, "id"));
        let first = text_box.children().find(|n| n.is_element()).unwrap();
        assert!(first.has_tag_name((NS, "label")), "label must come first");
        let default = text_box
            .children()
            .find(|n| n.has_tag_name((NS, "defaultValue")))
            .unwrap()
            .text()
            .unwrap();
        let max: usize = attr(text_el, "maxLength").parse().unwrap();
        assert!(default.len() <= max);
        seen.insert(display, (attr(text_el, "valueName"), default.to_owned()));
    }
    assert_eq!(seen["Mass deployment token"], ("Token", golden_token()));
    assert_eq!(seen["Activation server"], ("Server", ISS.to_owned()));
    // The help text names the expiry date.
    assert!(strings["IMD_Token_Help"].contains("2026-06-15T15:06:40Z"));
}

/// A plist `<dict>` as key → value node.
fn plist_dict<'a, 'i>(dict: roxmltree::Node<'a, 'i>) -> BTreeMap<&'a str, roxmltree::Node<'a, 'i>> {
    assert!(dict.has_tag_name("dict"), "{:?}", dict.tag_name());
    let els: Vec<_> = dict.children().filter(|n| n.is_element()).collect();
    assert_eq!(els.len() % 2, 0);
    let mut map = BTreeMap::new();
    for pair in els.chunks(2) {
        assert!(pair[0].has_tag_name("key"));
        let key = pair[0].text().unwrap();
        assert!(map.insert(key, pair[1]).is_none(), "duplicate key {key}");
    }
    map
}

fn string_of<'a>(n: roxmltree::Node<'a, '_>) -> &'a str {
    assert!(n.has_tag_name("string"), "{:?}", n.tag_name());
    n.text().unwrap_or("")
}

fn is_v4_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && parts.iter().all(|p| {
            p.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase())
        })
        && parts[2].starts_with('4')
        && parts[3].starts_with(['8', '9', 'A', 'B'])
}

fn options_for_parsing<'a>() -> roxmltree::ParsingOptions<'a> {
    roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    }
}

#[test]
fn mobileconfig_parses_with_expected_payloads() {
    let b = golden_bundle();
    let t = text(&b, "imd.mobileconfig");
    assert!(t.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!DOCTYPE plist"));
    let doc = roxmltree::Document::parse_with_options(&t, options_for_parsing()).unwrap();
    assert_eq!(attr(doc.root_element(), "version"), "1.0");
    let top = plist_dict(doc.root_element().first_element_child().unwrap());
    assert_eq!(string_of(top["PayloadType"]), "Configuration");
    assert_eq!(string_of(top["PayloadScope"]), "System");
    assert_eq!(string_of(top["PayloadIdentifier"]), "com.imd.imd.profile");
    assert_eq!(top["PayloadVersion"].text(), Some("1"));
    assert!(top["PayloadVersion"].has_tag_name("integer"));
    assert!(top["PayloadRemovalDisallowed"].has_tag_name("true"));

    let content: Vec<_> = top["PayloadContent"]
        .children()
        .filter(|n| n.is_element())
        .collect();
    assert_eq!(content.len(), 1);
    let payload = plist_dict(content[0]);
    assert_eq!(
        string_of(payload["PayloadType"]),
        "com.apple.ManagedClient.preferences"
    );
    assert_eq!(payload["PayloadVersion"].text(), Some("1"));
    assert!(
        string_of(payload["PayloadIdentifier"]).starts_with("com.imd.imd.profile."),
        "payload id should extend the profile id"
    );

    let uuids = [
        string_of(top["PayloadUUID"]),
        string_of(payload["PayloadUUID"]),
    ];
    assert!(uuids.iter().all(|u| is_v4_uuid(u)), "{uuids:?}");
    assert_ne!(uuids[0], uuids[1]);

    let domains = plist_dict(payload["PayloadContent"]);
    assert_eq!(domains.keys().copied().collect::<Vec<_>>(), ["com.imd.imd"]);
    let forced = plist_dict(domains["com.imd.imd"])["Forced"];
    let settings =
        plist_dict(plist_dict(forced.first_element_child().unwrap())["mcx_preference_settings"]);
    assert_eq!(string_of(settings["Token"]), golden_token());
    assert_eq!(string_of(settings["Server"]), ISS);
    assert_eq!(settings.len(), 2);

    // Another token: new UUIDs, same identifier.
    let other = bundle::build(&token_with(ISS, None), &opts()).unwrap();
    let other_text = text(&other, "imd.mobileconfig");
    assert!(!other_text.contains(uuids[0]) && !other_text.contains(uuids[1]));
    assert!(other_text.contains("<string>com.imd.imd.profile</string>"));
}

#[test]
fn plists_parse_with_token_and_server() {
    let b = golden_bundle();
    let t = text(&b, "imd.plist");
    let doc = roxmltree::Document::parse_with_options(&t, options_for_parsing()).unwrap();
    let dict = plist_dict(doc.root_element().first_element_child().unwrap());
    assert_eq!(dict.len(), 2);
    assert_eq!(string_of(dict["Token"]), golden_token());
    assert_eq!(string_of(dict["Server"]), ISS);

    // Intune wants the key/string pairs only: no header, no <plist>/<dict>.
    let body = text(&b, "imd-intune.plist");
    assert!(body.starts_with("<key>"), "{body}");
    let wrapped = format!("<dict>{body}</dict>");
    let doc = roxmltree::Document::parse(&wrapped).unwrap();
    let dict = plist_dict(doc.root_element());
    assert_eq!(string_of(dict["Token"]), golden_token());
    assert_eq!(string_of(dict["Server"]), ISS);
}

fn decode_reg(bytes: &[u8]) -> String {
    assert_eq!(&bytes[..2], [0xFF, 0xFE], "UTF-16 LE BOM");
    assert_eq!(bytes.len() % 2, 0);
    let units: Vec<u16> = bytes[2..]
        .chunks(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16(&units).unwrap()
}

#[test]
fn reg_file_is_utf16le_with_bom_and_crlf() {
    let b = golden_bundle();
    let t = decode_reg(&b.file("imd-token.reg").unwrap().contents);
    assert!(t.starts_with("Windows Registry Editor Version 5.00\r\n\r\n"));
    assert!(t.ends_with("\r\n\r\n"), "trailing blank line");
    assert_eq!(
        t.matches('\n').count(),
        t.matches("\r\n").count(),
        "bare LF"
    );
    let lines: Vec<&str> = t.split("\r\n").collect();
    let section = lines
        .iter()
        .position(|l| *l == r"[HKEY_LOCAL_MACHINE\SOFTWARE\Policies\Imd\IMD]")
        .expect("policy key section");
    assert_eq!(
        lines[section + 1],
        format!("\"Token\"=\"{}\"", golden_token())
    );
    assert_eq!(lines[section + 2], format!("\"Server\"=\"{ISS}\""));
}

#[test]
fn windows_scripts_install_quietly_with_quoted_properties() {
    let b = golden_bundle();
    let token = golden_token();
    let ps = text(&b, "Install-Imd.ps1");
    assert!(ps.starts_with('\u{FEFF}'));
    assert!(ps.contains(&format!(
        "$ArgumentList += 'IMD_TOKEN=\"{token}\"' + ' ' + 'IMD_SERVER=\"{ISS}\"'"
    )));
    for needle in [
        "'/i \"{0}\" /qn /norestart /l*v \"{1}\" ' -f $MsiPath, $MsiLog",
        "Start-Process -FilePath \"$env:SystemRoot\\System32\\msiexec.exe\" -ArgumentList $ArgumentList -Wait -PassThru",
        "$LogDir    = Join-Path $env:ProgramData 'Imd\\IMD'",
        "New-ScheduledTaskAction -Execute $Agent -Argument 'client activate --token-from-policy --vendor Imd --deadline-secs 240'",
        "-RepetitionInterval (New-TimeSpan -Minutes 5)",
        "-RepetitionDuration (New-TimeSpan -Hours 24)",
        "New-ScheduledTaskPrincipal -UserId 'NT AUTHORITY\\SYSTEM'",
        "-Force | Out-Null",
        "if (Test-Path -LiteralPath $Agent)",
        "$PolicyKey = 'HKLM:\\SOFTWARE\\Policies\\Imd\\IMD'",
    ] {
        assert!(ps.contains(needle), "Install-Imd.ps1 lacks {needle:?}");
    }
    assert_eq!(ps.matches('\n').count(), ps.matches("\r\n").count());

    let cmd = text(&b, "install.cmd");
    assert!(cmd.contains(&format!(
        "\"%SystemRoot%\\System32\\msiexec.exe\" /i \"%~dp0imd-agent.msi\" /qn /norestart \
         /l*v \"%LOGDIR%\\install.log\" IMD_TOKEN=\"{token}\" IMD_SERVER=\"{ISS}\"\r\n"
    )));
    assert!(cmd.contains("set \"LOGDIR=%ProgramData%\\Imd\\IMD\"\r\n"));
    assert!(cmd.contains("DisableDelayedExpansion"));
    assert_eq!(cmd.matches('\n').count(), cmd.matches("\r\n").count());

    let readme = text(&b, "README.txt");
    for needle in [
        ISS,
        "2026-06-15T15:06:40Z",
        "Group Policy",
        "Jamf",
        "Intune",
    ] {
        assert!(readme.contains(needle), "README lacks {needle}");
    }
    assert!(
        !readme.contains(&token),
        "README should not repeat the token"
    );
}

#[test]
fn escaping_functions_handle_hostile_values() {
    let v = r#"x"y\z%w&v<u'"#;
    assert_eq!(escape::xml(v), "x&quot;y\\z%w&amp;v&lt;u&apos;");
    assert_eq!(escape::reg(v), r#"x\"y\\z%w&v<u'"#);
    assert_eq!(escape::msi_value(v), r#""x""y\z%w&v<u'""#);
    assert_eq!(escape::cmd(&escape::msi_value(v)), r#""x""y\z%%w&v<u'""#);
    assert_eq!(escape::ps_single(v), r#"'x"y\z%w&v<u'''"#);
    // XML escaping round-trips through a real parser.
    let doc = format!("<a b=\"{0}\" c='{0}'>{0}</a>", escape::xml(v));
    let doc = roxmltree::Document::parse(&doc).unwrap();
    assert_eq!(doc.root_element().text(), Some(v));
    assert_eq!(doc.root_element().attribute("b"), Some(v));
    assert_eq!(doc.root_element().attribute("c"), Some(v));
}

#[test]
fn server_with_url_metacharacters_is_escaped_in_every_file() {
    // Legal in a URL, special in XML, cmd, PowerShell and MSI formatted text.
    let server = "https://imd.example.com/a?x=1&y='%41'&z=[b]";
    let b = bundle::build(&token_with(server, None), &opts()).unwrap();
    assert_eq!(b.server, server);
    for path in ["imd.admx", "en-US/imd.adml"] {
        roxmltree::Document::parse(&text(&b, path)).unwrap();
    }
    let adml = text(&b, "en-US/imd.adml");
    assert!(adml.contains("x=1&amp;y=&apos;%41&apos;&amp;z=[b]"));
    for path in ["imd.mobileconfig", "imd.plist"] {
        let t = text(&b, path);
        let doc = roxmltree::Document::parse_with_options(&t, options_for_parsing()).unwrap();
        assert!(
            doc.descendants()
                .any(|n| n.has_tag_name("string") && n.text() == Some(server)),
            "{path}"
        );
    }
    let reg = decode_reg(&b.file("imd-token.reg").unwrap().contents);
    assert!(reg.contains(&format!("\"Server\"=\"{server}\"\r\n")));
    let ps = text(&b, "Install-Imd.ps1");
    assert!(ps.contains("$Server    = 'https://imd.example.com/a?x=1&y=''%41''&z=[b]'"));
    assert!(ps.contains("'IMD_SERVER=\"https://imd.example.com/a?x=1&y=''%41''&z=[b]\"'"));
    let cmd = text(&b, "install.cmd");
    assert!(cmd.contains("IMD_SERVER=\"https://imd.example.com/a?x=1&y='%%41'&z=[b]\"\r\n"));
    // No warning for https, no expiry.
    assert!(b.warnings.is_empty());
}

#[test]
fn vendor_changes_keys_domain_and_paths() {
    let o = BundleOptions {
        vendor: "Contoso42".into(),
        msi: "Contoso IMD (x64).msi".into(),
        ..opts()
    };
    let b = bundle::build(&golden_token(), &o).unwrap();
    assert!(text(&b, "imd.admx").contains(r#"key="Software\Policies\Contoso42\IMD""#));
    assert!(text(&b, "imd.admx").contains(r#"namespace="Contoso42.Policies.IMD""#));
    assert!(text(&b, "imd.mobileconfig").contains("<key>com.contoso42.imd</key>"));
    assert!(
        decode_reg(&b.file("imd-token.reg").unwrap().contents)
            .contains(r"[HKEY_LOCAL_MACHINE\SOFTWARE\Policies\Contoso42\IMD]")
    );
    assert!(text(&b, "install.cmd").contains("/i \"%~dp0Contoso IMD (x64).msi\""));
    assert!(
        text(&b, "Install-Imd.ps1").contains("(Join-Path $PSScriptRoot 'Contoso IMD (x64).msi')")
    );
}

#[test]
fn tokens_outside_the_safe_charset_are_rejected() {
    let good = golden_token();
    for bad in [
        format!("{good}\""),
        format!("{good}\\"),
        format!("{good}%"),
        format!("{good}&"),
        format!("{good}<"),
        format!("{good}'"),
        format!("{good} "),
        format!("{good}="),
        format!("\"{good}\""),
        String::new(),
    ] {
        match bundle::build(&bad, &opts()) {
            Err(BundleError::Token(e)) => assert_eq!(e.kind(), "malformed", "{bad:?}"),
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    assert!(matches!(
        bundle::build("abc.def.ghi", &opts()),
        Err(BundleError::Token(_))
    ));
}

#[test]
fn expiry_rules() {
    // Expired: at exp exactly and after.
    for exp in [NOW, NOW - DAY] {
        match bundle::build(&token_with(ISS, Some(exp)), &opts()) {
            Err(BundleError::Expired { exp: e }) => assert_eq!(e, exp),
            other => panic!("{other:?}"),
        }
    }
    // Ten days left: a warning naming the date.
    let b = bundle::build(&token_with(ISS, Some(NOW + 10 * DAY)), &opts()).unwrap();
    assert_eq!(b.warnings.len(), 1, "{:?}", b.warnings);
    assert!(
        b.warnings[0].contains("2025-06-25T15:06:40Z"),
        "{:?}",
        b.warnings
    );
    assert_eq!(b.expires_at, Some(NOW + 10 * DAY));
    // Never expires: no warning.
    let b = bundle::build(&token_with(ISS, None), &opts()).unwrap();
    assert!(b.warnings.is_empty(), "{:?}", b.warnings);
    assert_eq!(b.expires_at, None);
    assert!(text(&b, "README.txt").contains("Token expires:     never"));
}

#[test]
fn server_rules() {
    let b = bundle::build(&token_with("http://imd.lan:8080", None), &opts()).unwrap();
    assert_eq!(b.warnings.len(), 1);
    assert!(b.warnings[0].contains("plain http"), "{:?}", b.warnings);
    for iss in [
        "imd.example.com",
        "ftp://imd.example.com",
        "https://",
        "https://a b.example.com",
        "https://imd.example.com/\"",
        "https://u:p@imd.example.com",
    ] {
        assert!(
            matches!(
                bundle::build(&token_with(iss, None), &opts()),
                Err(BundleError::BadServer(_))
            ),
            "{iss:?}"
        );
    }
}

#[test]
fn bad_options_are_rejected() {
    let t = golden_token();
    let cases = [
        BundleOptions {
            vendor: String::new(),
            ..opts()
        },
        BundleOptions {
            vendor: "Im-d".into(),
            ..opts()
        },
        BundleOptions {
            vendor: "x".repeat(65),
            ..opts()
        },
        BundleOptions {
            msi: r"..\imd.msi".into(),
            ..opts()
        },
        BundleOptions {
            msi: "dir/imd.msi".into(),
            ..opts()
        },
        BundleOptions {
            msi: "imd\".msi".into(),
            ..opts()
        },
        BundleOptions {
            pkg: "imd'.pkg".into(),
            ..opts()
        },
        BundleOptions {
            pkg: String::new(),
            ..opts()
        },
    ];
    for o in cases {
        assert!(
            matches!(bundle::build(&t, &o), Err(BundleError::BadOption(_))),
            "{o:?}"
        );
    }
}

#[test]
fn zip_holds_every_file_under_the_top_folder() {
    let b = golden_bundle();
    let bytes = bundle::to_zip(&b).unwrap();
    assert_eq!(bytes, bundle::to_zip(&b).unwrap(), "deterministic");
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    let mut entries = Vec::new();
    for i in 0..zip.len() {
        let mut f = zip.by_index(i).unwrap();
        assert_eq!(f.compression(), zip::CompressionMethod::Deflated);
        let mut contents = Vec::new();
        f.read_to_end(&mut contents).unwrap();
        entries.push((f.name().unwrap().to_string(), contents));
    }
    let expected: Vec<_> = b
        .files
        .iter()
        .map(|f| (format!("imd-bundle/{}", f.path), f.contents.clone()))
        .collect();
    assert_eq!(entries, expected);
}

#[test]
fn write_dir_creates_overwrites_own_files_and_refuses_strangers() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("new/bundle");
    let b = golden_bundle();
    bundle::write_dir(&b, &out).unwrap();
    for f in &b.files {
        assert_eq!(std::fs::read(out.join(&f.path)).unwrap(), f.contents);
    }
    // A rebuilt bundle overwrites its own files.
    std::fs::write(out.join("imd.admx"), "stale").unwrap();
    bundle::write_dir(&b, &out).unwrap();
    assert_eq!(
        std::fs::read(out.join("imd.admx")).unwrap(),
        b.file("imd.admx").unwrap().contents
    );
    // Anything else in the directory: refuse, and write nothing.
    std::fs::write(out.join("en-US/notes.txt"), "mine").unwrap();
    std::fs::write(out.join("imd.admx"), "stale").unwrap();
    match bundle::write_dir(&b, &out) {
        Err(BundleError::Io(e)) => {
            assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
            assert!(e.to_string().contains("en-US/notes.txt"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(std::fs::read(out.join("imd.admx")).unwrap(), b"stale");
}

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_imd-tokens"))
        .args(args)
        .output()
        .expect("run imd-tokens")
}

#[test]
fn cli_writes_a_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("bundle");
    let out = out_dir.to_str().unwrap();
    let now = NOW.to_string();
    let soon = token_with(ISS, Some(NOW + 10 * DAY));
    let res = cli(&[
        "bundle", "--token", &soon, "--out", out, "--now", &now, "--vendor", "Contoso",
    ]);
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert_eq!(res.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("warning: token expires within 30 days, on 2025-06-25T15:06:40Z"));
    let stdout = String::from_utf8(res.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 9, "{stdout}");
    assert!(stdout.lines().all(|l| Path::new(l).is_file()), "{stdout}");
    let admx = std::fs::read_to_string(out_dir.join("imd.admx")).unwrap();
    assert!(admx.contains(r"Software\Policies\Contoso\IMD"));
    let expected = bundle::build(
        &soon,
        &BundleOptions {
            vendor: "Contoso".into(),
            ..opts()
        },
    )
    .unwrap();
    for f in &expected.files {
        assert_eq!(
            std::fs::read(out_dir.join(&f.path)).unwrap(),
            f.contents,
            "{}",
            f.path
        );
    }

    // Expired: exit 1, nothing written.
    let expired_dir = tmp.path().join("expired");
    let res = cli(&[
        "bundle",
        "--token",
        &token_with(ISS, Some(NOW - DAY)),
        "--out",
        expired_dir.to_str().unwrap(),
        "--now",
        &now,
    ]);
    assert_eq!(res.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&res.stderr).contains("expired"));
    assert!(!expired_dir.exists());

    // Bad vendor or missing --out: usage, exit 2.
    let res = cli(&[
        "bundle", "--token", &soon, "--out", out, "--vendor", "a-b", "--now", &now,
    ]);
    assert_eq!(res.status.code(), Some(2));
    let res = cli(&["bundle", "--token", &soon]);
    assert_eq!(res.status.code(), Some(2));
    // Garbage token: invalid, exit 1.
    let res = cli(&["bundle", "--token", "nope", "--out", out]);
    assert_eq!(res.status.code(), Some(1));
}

#[test]
fn cli_reads_the_token_from_stdin() {
    use std::io::Write as _;
    use std::process::Stdio;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("b");
    let mut child = Command::new(env!("CARGO_BIN_EXE_imd-tokens"))
        .args(["bundle", "--token", "-", "--out", out.to_str().unwrap()])
        .args(["--now", &NOW.to_string(), "--msi", "agent.msi"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let token = golden_token();
    writeln!(child.stdin.take().unwrap(), "{token}").unwrap();
    let res = child.wait_with_output().unwrap();
    assert_eq!(
        res.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    assert!(res.stderr.is_empty(), "no warnings expected");
    let reg = decode_reg(&std::fs::read(out.join("imd-token.reg")).unwrap());
    assert!(reg.contains(&format!("\"Token\"=\"{token}\"\r\n")));
    let cmd = std::fs::read_to_string(out.join("install.cmd")).unwrap();
    assert!(cmd.contains("/i \"%~dp0agent.msi\""));
}

#[test]
fn both_windows_scripts_register_the_same_retrying_task() {
    let b = golden_bundle();
    let cmd = text(&b, "install.cmd");
    assert!(
        cmd.contains(r#"schtasks /Create /F /TN "\Imd\IMD activation" /RU SYSTEM"#),
        "{cmd}"
    );
    assert!(cmd.contains("/SC MINUTE /MO 5 /DU 24:00"), "{cmd}");
    assert!(
        cmd.contains("client activate --token-from-policy --vendor Imd"),
        "{cmd}"
    );
    assert!(cmd.contains(r#"reg add "%KEY%" /v Token"#), "{cmd}");
    let ps1 = text(&b, "Install-Imd.ps1");
    assert!(
        ps1.contains("$TaskName  = 'IMD activation'") && ps1.contains(r"$TaskPath  = '\Imd\'"),
        "{ps1}"
    );
    assert!(ps1.contains("-RepetitionInterval (New-TimeSpan -Minutes 5)"));
    assert!(ps1.contains("-RepetitionDuration (New-TimeSpan -Hours 24)"));
}
