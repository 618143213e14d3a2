//! macOS: `imd.mobileconfig` (a configuration profile with a managed
//! preferences payload), `imd.plist` (the same keys as a preference plist for
//! Jamf's "Application & Custom Settings") and `imd-intune.plist` (the
//! key/value pairs only, the form Intune's "Preference file" template
//! expects).

use super::escape::xml;
use super::{Ctx, derived_uuid};

const PLIST_HEAD: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
"#;

fn kv(indent: &str, key: &str, value: &str) -> String {
    format!(
        "{indent}<key>{}</key>\n{indent}<string>{}</string>\n",
        xml(key),
        xml(value)
    )
}

/// `PayloadIdentifier` of the profile. Stable per vendor (not per token), so
/// installing a bundle with a new token replaces the old profile.
pub(crate) fn profile_identifier(ctx: &Ctx) -> String {
    format!("{}.profile", ctx.domain())
}

pub(crate) fn mobileconfig(ctx: &Ctx) -> String {
    let domain = ctx.domain();
    let id = profile_identifier(ctx);
    let profile_uuid = derived_uuid(ctx.token, "mobileconfig-profile");
    let payload_uuid = derived_uuid(ctx.token, "mobileconfig-preferences");
    let vendor = xml(ctx.vendor);
    let prefs = format!(
        "{}{}",
        kv("                ", "Server", ctx.server),
        kv("                ", "Token", ctx.token)
    );
    format!(
        r#"{PLIST_HEAD}<dict>
  <key>PayloadContent</key>
  <array>
    <dict>
      <key>PayloadContent</key>
      <dict>
        <key>{domain_x}</key>
        <dict>
          <key>Forced</key>
          <array>
            <dict>
              <key>mcx_preference_settings</key>
              <dict>
{prefs}              </dict>
            </dict>
          </array>
        </dict>
      </dict>
      <key>PayloadDisplayName</key>
      <string>IMD activation settings</string>
      <key>PayloadIdentifier</key>
      <string>{id_x}.preferences</string>
      <key>PayloadType</key>
      <string>com.apple.ManagedClient.preferences</string>
      <key>PayloadUUID</key>
      <string>{payload_uuid}</string>
      <key>PayloadVersion</key>
      <integer>1</integer>
    </dict>
  </array>
  <key>PayloadDescription</key>
  <string>Activation server and mass deployment token for the IMD agent ({domain_x}). Token expires: {expiry}.</string>
  <key>PayloadDisplayName</key>
  <string>IMD activation</string>
  <key>PayloadIdentifier</key>
  <string>{id_x}</string>
  <key>PayloadOrganization</key>
  <string>{vendor}</string>
  <key>PayloadRemovalDisallowed</key>
  <true/>
  <key>PayloadScope</key>
  <string>System</string>
  <key>PayloadType</key>
  <string>Configuration</string>
  <key>PayloadUUID</key>
  <string>{profile_uuid}</string>
  <key>PayloadVersion</key>
  <integer>1</integer>
</dict>
</plist>
"#,
        domain_x = xml(&domain),
        id_x = xml(&id),
        expiry = ctx.expiry_text(),
    )
}

pub(crate) fn plist(ctx: &Ctx) -> String {
    format!(
        "{PLIST_HEAD}<dict>\n{}{}</dict>\n</plist>\n",
        kv("  ", "Server", ctx.server),
        kv("  ", "Token", ctx.token)
    )
}

pub(crate) fn intune_plist(ctx: &Ctx) -> String {
    format!(
        "{}{}",
        kv("", "Server", ctx.server),
        kv("", "Token", ctx.token)
    )
}
