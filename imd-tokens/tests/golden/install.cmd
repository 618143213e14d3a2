@echo off
rem install.cmd - silent IMD agent install (run as an administrator or SYSTEM).
rem Installs imd-agent.msi from this folder with the activation server and token as
rem MSI properties. Token expires: 2026-06-15T15:06:40Z.
rem Logs: %ProgramData%\Imd\IMD\install.log (msiexec, verbose)
rem       %ProgramData%\Imd\IMD\install-cmd.log (this script)
setlocal EnableExtensions DisableDelayedExpansion

set "LOGDIR=%ProgramData%\Imd\IMD"
if not exist "%LOGDIR%\" mkdir "%LOGDIR%"

"%SystemRoot%\System32\msiexec.exe" /i "%~dp0imd-agent.msi" /qn /norestart /l*v "%LOGDIR%\install.log" IMD_TOKEN="eyJ0eXAiOiJKV1QiLCJhbGciOiJFZERTQSIsImtpZCI6ImdvbGRlbi0yMDI1In0.eyJpc3MiOiJodHRwczovL2ltZC5leGFtcGxlLmNvbSIsImF1ZCI6ImltZDphY3RpdmF0aW9uIiwic3ViIjoib3JnLTciLCJqdGkiOiJ0b2stOSIsImltZCI6InY1IiwiaWF0IjoxNzQ5OTk5OTQwLCJleHAiOjE3ODE1MzYwMDB9.vJ80JC0GzDPTeMiR22sDfmflIAN9KbZjXd8HGKJbA2YAqKZSp2ccjgvjy7Eyxo_T-05sK_KXWofMwlncUgapCw" IMD_SERVER="https://imd.example.com"
set "RC=%ERRORLEVEL%"

>>"%LOGDIR%\install-cmd.log" echo %DATE% %TIME% msiexec exit code %RC%
if "%RC%"=="3010" set "RC=0"
if "%RC%"=="1641" set "RC=0"
if not "%RC%"=="0" exit /b %RC%

rem The agent activates from the policy key. Group Policy (imd.admx) may manage
rem these values; only fill in what is missing.
set "KEY=HKLM\SOFTWARE\Policies\Imd\IMD"
reg query "%KEY%" /v Token >nul 2>&1 || reg add "%KEY%" /v Token /t REG_SZ /d "eyJ0eXAiOiJKV1QiLCJhbGciOiJFZERTQSIsImtpZCI6ImdvbGRlbi0yMDI1In0.eyJpc3MiOiJodHRwczovL2ltZC5leGFtcGxlLmNvbSIsImF1ZCI6ImltZDphY3RpdmF0aW9uIiwic3ViIjoib3JnLTciLCJqdGkiOiJ0b2stOSIsImltZCI6InY1IiwiaWF0IjoxNzQ5OTk5OTQwLCJleHAiOjE3ODE1MzYwMDB9.vJ80JC0GzDPTeMiR22sDfmflIAN9KbZjXd8HGKJbA2YAqKZSp2ccjgvjy7Eyxo_T-05sK_KXWofMwlncUgapCw" /f >>"%LOGDIR%\install-cmd.log" 2>&1
reg query "%KEY%" /v Server >nul 2>&1 || reg add "%KEY%" /v Server /t REG_SZ /d "https://imd.example.com" /f >>"%LOGDIR%\install-cmd.log" 2>&1

rem Retry activation every 5 minutes for 24 hours, as SYSTEM: at computer startup
rem the network may not be up yet. /F replaces the task rather than duplicating it.
schtasks /Create /F /TN "\Imd\IMD activation" /RU SYSTEM /RL HIGHEST /SC MINUTE /MO 5 /DU 24:00 /TR "\"%ProgramFiles%\Imd\IMD\imd.exe\" client activate --token-from-policy --vendor Imd --deadline-secs 240" >>"%LOGDIR%\install-cmd.log" 2>&1
set "RC=%ERRORLEVEL%"
>>"%LOGDIR%\install-cmd.log" echo %DATE% %TIME% schtasks exit code %RC%
exit /b %RC%
