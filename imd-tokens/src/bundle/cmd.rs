//! `install.cmd`: the same silent MSI install for admins who deploy with a
//! batch file, logging to the same place as `Install-Imd.ps1`, filling in the
//! policy values and registering the same retrying scheduled task (schtasks).

use super::Ctx;
use super::escape::{cmd, msi_value};

pub(crate) fn script(ctx: &Ctx) -> String {
    let vendor = ctx.vendor;
    // MSI quoting first (doubling `"`), then batch escaping (doubling `%`).
    let token = cmd(&msi_value(ctx.token));
    let server = cmd(&msi_value(ctx.server));
    let msi = cmd(ctx.msi);
    let expiry = cmd(&ctx.expiry_text());
    // `reg add /d` takes a quoted value; the token and URL charsets exclude `"`, but escape anyway.
    let reg_token = format!("\"{}\"", cmd(&ctx.token.replace('"', "\\\"")));
    let reg_server = format!("\"{}\"", cmd(&ctx.server.replace('"', "\\\"")));
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
if not "%RC%"=="0" exit /b %RC%

rem The agent activates from the policy key. Group Policy (imd.admx) may manage
rem these values; only fill in what is missing.
set "KEY=HKLM\SOFTWARE\Policies\{vendor}\IMD"
reg query "%KEY%" /v Token >nul 2>&1 || reg add "%KEY%" /v Token /t REG_SZ /d {reg_token} /f >>"%LOGDIR%\install-cmd.log" 2>&1
reg query "%KEY%" /v Server >nul 2>&1 || reg add "%KEY%" /v Server /t REG_SZ /d {reg_server} /f >>"%LOGDIR%\install-cmd.log" 2>&1

rem Retry activation every 5 minutes for 24 hours, as SYSTEM: at computer startup
rem the network may not be up yet. /F replaces the task rather than duplicating it.
schtasks /Create /F /TN "\{vendor}\IMD activation" /RU SYSTEM /RL HIGHEST /SC MINUTE /MO 5 /DU 24:00 /TR "\"%ProgramFiles%\{vendor}\IMD\imd.exe\" client activate --token-from-policy --vendor {vendor} --deadline-secs 240" >>"%LOGDIR%\install-cmd.log" 2>&1
set "RC=%ERRORLEVEL%"
>>"%LOGDIR%\install-cmd.log" echo %DATE% %TIME% schtasks exit code %RC%
exit /b %RC%
"#
    );
    // Batch files are happiest with CRLF.
    text.replace('\n', "\r\n")
}
