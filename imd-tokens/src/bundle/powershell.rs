//! `Install-Imd.ps1`: a Group Policy computer-startup script (runs as
//! SYSTEM). It installs the agent MSI silently with the token and server as
//! MSI properties, makes sure the policy values exist, and registers a
//! scheduled task that retries activation every 5 minutes for 24 hours.
//! Every step is idempotent, so the script can run at every boot.

use super::Ctx;
use super::escape::{msi_value, ps_single};

/// Arguments of the activation task: `imd client activate` reading Token
/// and Server from `HKLM\Software\Policies\<vendor>\IMD`, giving up after
/// 4 minutes so one run ends before the next is due. See README.md
/// ("Deployment bundles") for the assumption about the agent's location.
pub(crate) fn activate_args(vendor: &str) -> String {
    format!("client activate --token-from-policy --vendor {vendor} --deadline-secs 240")
}

pub(crate) fn script(ctx: &Ctx) -> String {
    let vendor = ctx.vendor;
    let msi = ps_single(ctx.msi);
    let token_arg = ps_single(&format!("IMD_TOKEN={}", msi_value(ctx.token)));
    let server_arg = ps_single(&format!("IMD_SERVER={}", msi_value(ctx.server)));
    let token = ps_single(ctx.token);
    let server = ps_single(ctx.server);
    let policy_key = ps_single(&format!(r"HKLM:\SOFTWARE\Policies\{vendor}\IMD"));
    let log_dir = ps_single(&format!(r"{vendor}\IMD"));
    let agent = ps_single(&format!(r"{vendor}\IMD\imd.exe"));
    let activate_args = activate_args(vendor);
    let activate = ps_single(&activate_args);
    let task_path = ps_single(&format!(r"\{vendor}\"));
    let expiry = ctx.expiry_text();
    format!(
        r#"<#
  Install-Imd.ps1 - IMD agent install and activation (Group Policy computer startup script).

  Runs as SYSTEM. Installs the IMD agent MSI silently, writes the activation
  server and token to {vendor}'s policy key unless Group Policy already set
  them, and registers the scheduled task "IMD activation", which runs
  "imd.exe {activate_args}" every 5 minutes for 24 hours.
  Safe to run again at every boot: an installed agent is not reinstalled and
  the task is replaced, not duplicated.

  Logs: %ProgramData%\{vendor}\IMD\install.log (msiexec, verbose)
        %ProgramData%\{vendor}\IMD\Install-Imd.log (this script)
  Token expires: {expiry}
#>
param(
    # The agent installer; by default next to this script.
    [string]$MsiPath = (Join-Path $PSScriptRoot {msi})
)

$ErrorActionPreference = 'Stop'

$Server    = {server}
$Token     = {token}
$PolicyKey = {policy_key}
$LogDir    = Join-Path $env:ProgramData {log_dir}
$MsiLog    = Join-Path $LogDir 'install.log'
$ScriptLog = Join-Path $LogDir 'Install-Imd.log'
$Agent     = Join-Path $env:ProgramFiles {agent}
$TaskName  = 'IMD activation'
$TaskPath  = {task_path}

New-Item -ItemType Directory -Force -Path $LogDir | Out-Null

function Write-Log([string]$Message) {{
    $line = '{{0}} {{1}}' -f (Get-Date).ToUniversalTime().ToString('yyyy-MM-ddTHH:mm:ssZ'), $Message
    Add-Content -LiteralPath $ScriptLog -Value $line
}}

try {{
    # 1. Install the agent unless it is already there.
    if (Test-Path -LiteralPath $Agent) {{
        Write-Log "agent already installed at $Agent; skipping msiexec"
    }} else {{
        if (-not (Test-Path -LiteralPath $MsiPath)) {{
            Write-Log "installer not found: $MsiPath"
            exit 1619
        }}
        # One argument string, built here, so PowerShell never re-splits the
        # quoted MSI properties. Embedded quotes in property values are doubled.
        $ArgumentList = '/i "{{0}}" /qn /norestart /l*v "{{1}}" ' -f $MsiPath, $MsiLog
        $ArgumentList += {token_arg} + ' ' + {server_arg}
        Write-Log "running msiexec /i `"$MsiPath`" (log: $MsiLog)"
        $p = Start-Process -FilePath "$env:SystemRoot\System32\msiexec.exe" -ArgumentList $ArgumentList -Wait -PassThru
        switch ($p.ExitCode) {{
            0       {{ Write-Log 'msiexec succeeded' }}
            3010    {{ Write-Log 'msiexec succeeded; a restart is required' }}
            1641    {{ Write-Log 'msiexec succeeded and started a restart' }}
            1618    {{ Write-Log 'another installation is in progress (1618); will retry at next startup'; exit 1618 }}
            default {{ Write-Log "msiexec failed with exit code $($p.ExitCode); see $MsiLog"; exit $p.ExitCode }}
        }}
    }}

    # 2. The agent activates from the policy key. Group Policy (imd.admx) may
    #    manage these values; only fill in what is missing.
    if (-not (Test-Path -LiteralPath $PolicyKey)) {{
        New-Item -Path $PolicyKey -Force | Out-Null
    }}
    $current = Get-ItemProperty -LiteralPath $PolicyKey
    if (-not $current.Token) {{
        New-ItemProperty -LiteralPath $PolicyKey -Name 'Token' -Value $Token -PropertyType String -Force | Out-Null
        Write-Log 'wrote policy value Token'
    }}
    if (-not $current.Server) {{
        New-ItemProperty -LiteralPath $PolicyKey -Name 'Server' -Value $Server -PropertyType String -Force | Out-Null
        Write-Log 'wrote policy value Server'
    }}

    # 3. Retry activation every 5 minutes for 24 hours, as SYSTEM.
    $action    = New-ScheduledTaskAction -Execute $Agent -Argument {activate}
    $trigger   = New-ScheduledTaskTrigger -Once -At (Get-Date).AddMinutes(1) `
                     -RepetitionInterval (New-TimeSpan -Minutes 5) `
                     -RepetitionDuration (New-TimeSpan -Hours 24)
    $principal = New-ScheduledTaskPrincipal -UserId 'NT AUTHORITY\SYSTEM' -LogonType ServiceAccount -RunLevel Highest
    $settings  = New-ScheduledTaskSettingsSet -StartWhenAvailable -MultipleInstances IgnoreNew `
                     -ExecutionTimeLimit (New-TimeSpan -Minutes 5)
    Register-ScheduledTask -TaskName $TaskName -TaskPath $TaskPath -Action $action -Trigger $trigger `
        -Principal $principal -Settings $settings -Force | Out-Null
    Write-Log "scheduled task $TaskPath$TaskName registered"
    exit 0
}} catch {{
    Write-Log "error: $($_.Exception.Message)"
    exit 1
}}
"#
    )
}
