# Build Ocula for Windows: PyInstaller folder, self-test of the frozen app, Inno Setup installer.
#
#   powershell -ExecutionPolicy Bypass -File packaging\windows\build_windows.ps1 [-Variant cpu|cuda]
#
# Needs: Python 3.11 with `pip install -e .[cpu]` (or .[gpu] for cuda) and the matching torch
# (CPU: pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu;
# CUDA: the cu1xx index), pyinstaller, and Inno Setup 6 (iscc.exe; preinstalled on GitHub's
# windows runners, else `choco install innosetup`).
param([string]$Variant = "", [string]$Python = "python")
$ErrorActionPreference = "Stop"
Set-Location (Join-Path $PSScriptRoot "..\..")

$Version = & $Python -c "import tomllib; print(tomllib.load(open('pyproject.toml','rb'))['project']['version'])"
if ($Variant) { $env:OCULA_VARIANT = $Variant }
& $Python -m PyInstaller --noconfirm --clean --log-level WARN packaging\ocula.spec
if ($LASTEXITCODE -ne 0) { throw "PyInstaller failed" }
$Variant = & $Python -c "import torch; print('cuda' if torch.version.cuda else 'cpu')"
if ($env:OCULA_VARIANT) { $Variant = $env:OCULA_VARIANT }

$cli = "dist\ocula\ocula-cli.exe"
$out = & $cli --version
if ($out -ne "ocula $Version") { throw "frozen --version said '$out', expected 'ocula $Version'" }
$env:OCULA_SELFTEST_REPORT = (Join-Path (Get-Location) "dist\selftest-report.json")
& $cli --self-test
if ($LASTEXITCODE -ne 0) { throw "frozen self-test failed: see $env:OCULA_SELFTEST_REPORT" }

$iscc = (Get-Command iscc.exe -ErrorAction SilentlyContinue).Source
if (-not $iscc) { $iscc = "${env:ProgramFiles(x86)}\Inno Setup 6\ISCC.exe" }
& $iscc "/DAppVersion=$Version" "/DVariant=$Variant" packaging\windows\ocula.iss
if ($LASTEXITCODE -ne 0) { throw "Inno Setup failed" }
Get-ChildItem dist\*.exe | ForEach-Object { "{0}  {1:N0} MB" -f $_.Name, ($_.Length / 1MB) }
