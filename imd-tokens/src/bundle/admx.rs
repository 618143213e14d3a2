//! `imd.admx` (language-neutral policy definitions) and `en-US/imd.adml`
//! (its strings and presentations).
//!
//! Two Machine policies under `Software\Policies\<vendor>\IMD`: "Mass
//! deployment token" (value `Token`) and "Activation server" (value
//! `Server`). The ADML pre-fills both text boxes with this bundle's values,
//! so an admin only has to enable the policies.
//!
//! No `<using>` namespace is declared: nothing here needs another file's
//! categories, and a reference to e.g. `Microsoft.Policies.Windows` would
//! make Intune's custom ADMX import demand that file too.

use super::escape::xml;
use super::{Ctx, MAX_SERVER_LEN};
use crate::verify::MAX_TOKEN_LEN;

const NS: &str = "http://schemas.microsoft.com/GroupPolicy/2006/07/PolicyDefinitions";
const REVISION: &str = "1.0";

pub(crate) fn admx(ctx: &Ctx) -> String {
    let key = xml(&ctx.policy_key());
    let vendor = ctx.vendor;
    let policy = |name: &str, value: &str, max: usize| {
        format!(
            r#"    <policy name="{name}" class="Machine" displayName="$(string.{name})" explainText="$(string.{name}_Help)" presentation="$(presentation.{name})" key="{key}">
      <parentCategory ref="IMD" />
      <supportedOn ref="SUPPORTED_IMD_Agent" />
      <elements>
        <text id="{name}_Text" valueName="{value}" maxLength="{max}" required="true" />
      </elements>
    </policy>
"#
        )
    };
    let mut s = format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<!-- imd mass deployment policy template. Copy to PolicyDefinitions\imd.admx
     together with en-US\imd.adml. -->
<policyDefinitions xmlns="{NS}" revision="{REVISION}" schemaVersion="1.0">
  <policyNamespaces>
    <target prefix="imd" namespace="{vendor}.Policies.IMD" />
  </policyNamespaces>
  <resources minRequiredRevision="{REVISION}" />
  <supportedOn>
    <definitions>
      <definition name="SUPPORTED_IMD_Agent" displayName="$(string.SUPPORTED_IMD_Agent)" />
    </definitions>
  </supportedOn>
  <categories>
    <category name="IMD" displayName="$(string.IMD_Category)" />
  </categories>
  <policies>
"#
    );
    s.push_str(&policy("IMD_Token", "Token", MAX_TOKEN_LEN));
    s.push_str(&policy("IMD_Server", "Server", MAX_SERVER_LEN));
    s.push_str("  </policies>\n</policyDefinitions>\n");
    s
}

pub(crate) fn adml(ctx: &Ctx) -> String {
    let key = format!(r"HKEY_LOCAL_MACHINE\{}", ctx.policy_key());
    let expiry = ctx.expiry_text();
    let token_help = xml(&format!(
        "Sets the mass deployment token the IMD agent uses to activate this computer \
         with the activation server (registry value Token under {key}).\n\n\
         The token in this template expires: {expiry}. Replace it before then.\n\n\
         By default, Group Policy settings can be read by every domain user and \
         device, and every user of the computer can read this value. The token \
         only allows activation; revoke it on the IMD server if it leaks."
    ));
    let server_help = xml(&format!(
        "Sets the URL of the IMD activation server (registry value Server under {key}). \
         This template was generated for {}.",
        ctx.server
    ));
    let text_box = |name: &str, label: &str, value: &str| {
        format!(
            "      <presentation id=\"{name}\">\n        <textBox refId=\"{name}_Text\">\n          \
             <label>{label}</label>\n          <defaultValue>{}</defaultValue>\n        \
             </textBox>\n      </presentation>\n",
            xml(value)
        )
    };
    let mut s = format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<policyDefinitionResources xmlns="{NS}" revision="{REVISION}" schemaVersion="1.0">
  <displayName>IMD mass deployment</displayName>
  <description>Activation server and mass deployment token for the IMD agent.</description>
  <resources>
    <stringTable>
      <string id="SUPPORTED_IMD_Agent">IMD agent on Windows</string>
      <string id="IMD_Category">IMD ({})</string>
      <string id="IMD_Token">Mass deployment token</string>
      <string id="IMD_Token_Help">{token_help}</string>
      <string id="IMD_Server">Activation server</string>
      <string id="IMD_Server_Help">{server_help}</string>
    </stringTable>
    <presentationTable>
"#,
        xml(ctx.vendor)
    );
    s.push_str(&text_box("IMD_Token", "Token:", ctx.token));
    s.push_str(&text_box("IMD_Server", "Server URL:", ctx.server));
    s.push_str("    </presentationTable>\n  </resources>\n</policyDefinitionResources>\n");
    s
}
