//! `README.txt`: what each file is for and how to deploy it.

use super::powershell::activate_args;
use super::{
    ADML_PATH, ADMX_PATH, CMD_PATH, Ctx, INTUNE_PLIST_PATH, MOBILECONFIG_PATH, PLIST_PATH,
    PS1_PATH, REG_PATH,
};

pub(crate) fn readme(ctx: &Ctx) -> String {
    let vendor = ctx.vendor;
    let server = ctx.server;
    let expiry = ctx.expiry_text();
    let msi = ctx.msi;
    let pkg = ctx.pkg;
    let domain = ctx.domain();
    let profile_id = super::macos::profile_identifier(ctx);
    let activate = activate_args(vendor);
    let text = format!(
        r#"IMD deployment bundle
=====================

Activation server: {server}
Token expires:     {expiry}
Policy key:        HKEY_LOCAL_MACHINE\SOFTWARE\Policies\{vendor}\IMD (values Token, Server)
macOS domain:      {domain} (keys Token, Server)

Security: the token is readable by every user of a computer that receives it,
and Group Policy settings are readable by every domain user. It only allows
a machine to activate. If it leaks, revoke it on the IMD server and deploy a
new bundle. Replace this bundle before the token expires.

Files
-----
{ADMX_PATH}          Group Policy template (policy definitions).
{ADML_PATH}    Its English strings; the text boxes are pre-filled with
                  this bundle's token and server.
{REG_PATH}     The same two registry values for regedit /s or reg import.
{PS1_PATH}   Computer startup script: installs {msi}, writes the policy
                  values if missing, schedules activation retries.
{CMD_PATH}       The silent MSI install as a batch file.
{MOBILECONFIG_PATH}  macOS configuration profile (managed preferences).
{PLIST_PATH}         macOS preference file for Jamf "Application & Custom Settings".
{INTUNE_PLIST_PATH}  Key/value pairs only, for Intune's macOS "Preference file".

Windows: Group Policy
---------------------
1. Copy {ADMX_PATH} to \\<domain>\SYSVOL\<domain>\Policies\PolicyDefinitions\
   and {ADML_PATH} to ...\PolicyDefinitions\en-US\ (or, without a central
   store, to %SystemRoot%\PolicyDefinitions on the admin workstation).
2. In Group Policy Management, create or edit a GPO linked to the target
   computers' OU.
3. Computer Configuration > Policies > Administrative Templates > IMD ({vendor}):
   enable "Mass deployment token" and "Activation server". The text boxes
   are pre-filled; check them and click OK.
4. Copy {PS1_PATH} and {msi} into the same folder: either the GPO's
   Computer > Scripts > Startup folder ("Show Files..."), or a share that
   Domain Computers can read.
5. Computer Configuration > Policies > Windows Settings > Scripts > Startup >
   PowerShell Scripts: add {PS1_PATH}. If script execution is restricted by
   policy, use the Scripts tab instead with
     Script name: %SystemRoot%\System32\WindowsPowerShell\v1.0\powershell.exe
     Parameters:  -NoProfile -NonInteractive -ExecutionPolicy Bypass -File "<path>\{PS1_PATH}"
   (a Group Policy execution policy still wins over -ExecutionPolicy; then
   the script must be signed).
6. Restart a test computer. Check %ProgramData%\{vendor}\IMD\Install-Imd.log,
   %ProgramData%\{vendor}\IMD\install.log (msiexec) and the scheduled task
   \{vendor}\IMD activation.

The startup script installs the agent once, then registers a SYSTEM task
that runs "imd.exe {activate}" from
%ProgramFiles%\{vendor}\IMD every 5 minutes for 24 hours, because the network
is often not ready at startup. Running the script again (every boot) is
harmless: the agent is not reinstalled and the task is replaced.

Windows without Group Policy
----------------------------
- Registry only: reg import {REG_PATH}   (as an administrator; 64-bit reg.exe)
- Install only:  run {CMD_PATH} as an administrator, with {msi} in the same
  folder. It installs silently (3010 and 1641, restart needed, count as
  success), fills in the Token/Server policy values if Group Policy has not,
  registers the same retrying "IMD activation" task as the PowerShell script,
  and logs to %ProgramData%\{vendor}\IMD\install.log and install-cmd.log.
- Intune (Win32 app): wrap {msi} and {CMD_PATH}, install command
  "install.cmd", and import {ADMX_PATH}/{ADML_PATH} under Devices >
  Configuration > Import ADMX, or deliver {REG_PATH} by script.
Note: msiexec's verbose log records the IMD_TOKEN property unless the MSI
lists it in MsiHiddenProperties; treat install.log like the token.

macOS: Jamf Pro
---------------
1. Computers > Configuration Profiles > Upload: choose {MOBILECONFIG_PATH}
   (Level: Computer). Scope it to the target computers.
   Or: New profile > Application & Custom Settings > Upload, preference
   domain {domain}, file {PLIST_PATH}.
2. Deploy {pkg} with a Jamf policy (Packages) to the same scope.
3. The agent reads Token and Server from the managed preferences of {domain}.

macOS: Intune
-------------
1. Devices > macOS > Configuration > Create > Templates > Custom: upload
   {MOBILECONFIG_PATH}, deployment channel "Device channel".
   Or Templates > Preference file: domain {domain}, file {INTUNE_PLIST_PATH}.
2. Deploy {pkg} as a macOS app (LOB/PKG) to the same group.

The profile's identifier ({profile_id}) is the same for every bundle of
this vendor, so installing a newer bundle's profile replaces the old one.
Manual install for a test Mac: sudo installer -pkg {pkg} -target / and open
{MOBILECONFIG_PATH} (System Settings > Privacy & Security > Profiles).
"#
    );
    // Windows admins open this with Notepad.
    text.replace('\n', "\r\n")
}
