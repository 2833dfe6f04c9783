; Inno Setup script: a per-user (or all-users) installer for the PyInstaller folder.
;
;   pyinstaller --noconfirm packaging\ocula.spec
;   iscc /DAppVersion=X.Y.Z /DVariant=cpu packaging\windows\ocula.iss
;
; AppVersion must be pyproject.toml's version (the one source of truth); build_windows.ps1
; reads it from there and passes it in. The installer lands in dist\.
; ocula.exe is the windowed desktop app; ocula-cli.exe is the same program with a console
; (`ocula-cli --self-test`, `ocula-cli run ...`), added to the user's PATH if asked.

#ifndef AppVersion
  #error Pass the version: iscc /DAppVersion=X.Y.Z (build_windows.ps1 reads it from pyproject.toml)
#endif
#ifndef Variant
  #define Variant "cpu"
#endif
#define AppName "Ocula"
#define AppExeName "ocula.exe"
#define CliExeName "ocula-cli.exe"
#define BundleDir "..\..\dist\ocula"

[Setup]
AppId={{7C2B4C1E-5D0A-4E4B-9E7B-0C6A1F3D2B91}
AppName={#AppName}
AppVersion={#AppVersion}
AppVerName={#AppName} {#AppVersion} ({#Variant})
AppPublisher=Ocula
DefaultDirName={autopf}\{#AppName}
DefaultGroupName={#AppName}
DisableProgramGroupPage=yes
; per-user install by default (no admin prompt); users may choose all users
PrivilegesRequired=lowest
PrivilegesRequiredOverridesAllowed=dialog
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible
OutputDir=..\..\dist
OutputBaseFilename=ocula-{#AppVersion}-windows-x64-{#Variant}-setup
SetupIconFile=..\..\resources\icons\ocula.ico
UninstallDisplayIcon={app}\{#AppExeName}
Compression=lzma2/normal
SolidCompression=no
; torch's DLLs are large; a solid archive would need them all in memory at once
DiskSpanning=no
WizardStyle=modern
ChangesEnvironment=yes

[Languages]
Name: "english"; MessagesFile: "compiler:Default.isl"

[Tasks]
Name: "desktopicon"; Description: "{cm:CreateDesktopIcon}"; GroupDescription: "{cm:AdditionalIcons}"; Flags: unchecked
Name: "addtopath"; Description: "Add ocula-cli to PATH (command line use)"; Flags: unchecked

[Files]
Source: "{#BundleDir}\*"; DestDir: "{app}"; Flags: ignoreversion recursesubdirs createallsubdirs

[Icons]
Name: "{group}\{#AppName}"; Filename: "{app}\{#AppExeName}"
Name: "{group}\{#AppName} self-test"; Filename: "{app}\{#CliExeName}"; Parameters: "--self-test"
Name: "{group}\{cm:UninstallProgram,{#AppName}}"; Filename: "{uninstallexe}"
Name: "{autodesktop}\{#AppName}"; Filename: "{app}\{#AppExeName}"; Tasks: desktopicon

[Registry]
Root: HKCU; Subkey: "Environment"; ValueType: expandsz; ValueName: "Path"; \
  ValueData: "{olddata};{app}"; Tasks: addtopath; Check: NeedsAddPath(ExpandConstant('{app}'))

[Run]
Filename: "{app}\{#AppExeName}"; Description: "{cm:LaunchProgram,{#AppName}}"; Flags: nowait postinstall skipifsilent

[Code]
function NeedsAddPath(Dir: string): Boolean;
var
  Current: string;
begin
  if not RegQueryStringValue(HKEY_CURRENT_USER, 'Environment', 'Path', Current) then
  begin
    Result := True;
    exit;
  end;
  Result := Pos(';' + Uppercase(Dir) + ';', ';' + Uppercase(Current) + ';') = 0;
end;
