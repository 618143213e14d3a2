//! `install.cmd`: the same silent MSI install for admins who deploy with a
//! batch file, logging to the same place as `Install-Imd.ps1`.

use super::Ctx;
use super::escape::{cmd, msi_value};

pub(crate) fn script(ctx: &Ctx) -> String {
    let vendor = ctx.vendor;
    // MSI quoting first (doubling `"`), then batch escaping (doubling `%`).
    let token = cmd(&msi_value(ctx.token));
    let server = cmd(&msi_value(ctx.server));
    let msi = cmd(ctx.msi);
    let expiry = cmd(&ctx.expiry_text());
    let text = format!(
        r#"@echo off
rem install.cmd - silent IMD agent install (run as an administrator or SYSTEM).
rem Installs {msi} from this folder with the activation server and token as
rem MSI properties. Token expires: {expiry}.
rem Logs: %ProgramData%\{vendor}\IMD\install.log (msiexec, verbose)
rem       %ProgramData%\{vendor}\IMD\install-cmd.log (this script)
setlocal EnableExtensions DisableDelayedExpansion

set "LOGDIR=%ProgramData%\{vendor}\IMD"
if not exist "%LOGDIR%\" mkdir "%LOGDIR%"

"%SystemRoot%\System32\msiexec.exe" /i "%~dp0{msi}" /qn /norestart /l*v "%LOGDIR%\install.log" IMD_TOKEN={token} IMD_SERVER={server}
set "RC=%ERRORLEVEL%"

>>"%LOGDIR%\install-cmd.log" echo %DATE% %TIME% msiexec exit code %RC%
if "%RC%"=="3010" set "RC=0"
if "%RC%"=="1641" set "RC=0"
exit /b %RC%
"#
    );
    // Batch files are happiest with CRLF.
    text.replace('\n', "\r\n")
}
