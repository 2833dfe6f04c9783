#!/usr/bin/env bash
# Build Ocula.app and a drag-to-Applications .dmg on macOS.
#
#   packaging/macos/build_macos.sh
#
# Needs: Python 3.11 with `pip install -e .[cpu]` (PyPI's macOS torch wheels are CPU/MPS
# builds, so this is the "cpu" variant; Apple GPUs run through MPS), pyinstaller.
# Uses hdiutil (part of macOS); `create-dmg` (brew) is used instead when installed, for a
# window with the Applications link laid out. Signing: PyInstaller signs ad hoc; a release
# needs `codesign --deep --options runtime -s "Developer ID Application: ..."` and
# `xcrun notarytool submit --wait` (not done here: needs an Apple account).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python}
VERSION=$($PY -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
ARCH=$(uname -m)
$PY -m PyInstaller --noconfirm --clean --log-level WARN packaging/ocula.spec
APP=dist/Ocula.app
test -d "$APP"

# The frozen app must pass its own self-test before it is packed.
"$APP/Contents/MacOS/ocula-cli" --version
OCULA_SELFTEST_REPORT="$PWD/dist/selftest-report.json" "$APP/Contents/MacOS/ocula-cli" --self-test

DMG=dist/ocula-$VERSION-macos-$ARCH.dmg
rm -f "$DMG"
if command -v create-dmg >/dev/null; then
  create-dmg --volname "Ocula $VERSION" --volicon resources/icons/ocula.icns \
    --window-size 540 360 --icon-size 96 --icon "Ocula.app" 140 170 \
    --app-drop-link 400 170 --no-internet-enable "$DMG" "$APP"
else
  STAGE=$(mktemp -d)
  cp -R "$APP" "$STAGE/"
  ln -s /Applications "$STAGE/Applications"
  hdiutil create -volname "Ocula $VERSION" -srcfolder "$STAGE" -ov -format UDZO "$DMG"
  rm -rf "$STAGE"
fi
ls -lh "$DMG"
