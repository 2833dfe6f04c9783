#!/usr/bin/env bash
# Build Ocula for Linux, package it, and prove the frozen app works.
#
#   packaging/build_linux.sh            build + tarball + smoke tests
#   OCULA_VARIANT=lite|cpu|cuda ...     which variant (default: what the installed torch is;
#                                       lite = no torch, ONNX Runtime only, a few hundred MB)
#   SKIP_BUILD=1 packaging/build_linux.sh   re-run only the smoke tests + packaging
#   SKIP_PACK=1 ...                     no tarball, .deb or AppImage
# (The tarball renames the top folder, not symlink targets: ocula-cli -> ocula.)
#
# Steps: PyInstaller one-folder bundle (packaging/ocula.spec) -> the frozen app's
# `--version`, `--self-test` (report JSON) and the GUI under Xvfb (start-up probe +
# screenshot) -> tarball with a freedesktop .desktop entry, icon and install.sh, and a .deb
# (packaging/linux/build_deb.sh; tests/integration/test_linux_packages.py installs it) and an
# AppImage (packaging/linux/build_appimage.sh; the same test runs it).
# Results: build/linux-smoke/ (result.json, self-test report, logs, screenshot).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PY:-.venv/bin/python}
WORK=build/pyinstaller
BUNDLE=$WORK/dist/ocula
SMOKE=build/linux-smoke
mkdir -p "$SMOKE" dist

VERSION=$($PY -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
VARIANT=${OCULA_VARIANT:-$($PY -c 'import torch; print("cuda" if torch.version.cuda else "cpu")' 2>/dev/null || echo lite)}
export OCULA_VARIANT=$VARIANT
ARCH=$(uname -m)
NAME=ocula-$VERSION-linux-$ARCH-$VARIANT
log() { echo "[build_linux $(date +%H:%M:%S)] $*"; }

# -- tools -----------------------------------------------------------------------------------
if ! $PY -m PyInstaller --version >/dev/null 2>&1; then
  log "installing PyInstaller into .venv"
  .venv/bin/pip install -q 'pyinstaller>=6.10'
fi
if [ "$($PY -c 'import importlib.metadata as m; print(m.version("ocula"))')" != "$VERSION" ]; then
  log "refreshing the installed ocula metadata (pyproject says $VERSION)"
  .venv/bin/pip install -q --no-deps -e .
fi
apt_get() {  # best effort: root + apt, else say what is missing
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@") >/dev/null 2>&1 || true
  fi
}
command -v Xvfb >/dev/null || apt_get xvfb
command -v import >/dev/null || apt_get imagemagick
command -v xwd >/dev/null || apt_get x11-apps
command -v desktop-file-validate >/dev/null || apt_get desktop-file-utils
# ICU tools that rebuild Qt's ICU data library with English and root only (slim_binaries.py)
{ command -v icupkg || [ -x /usr/sbin/icupkg ]; } >/dev/null || apt_get icu-devtools
# the AppImage: mksquashfs, and the static libraries its runtime is linked from
SQUASHFUSE_A=/usr/lib/$(gcc -print-multiarch 2>/dev/null)/libsquashfuse_ll.a
command -v mksquashfs >/dev/null || apt_get squashfs-tools
[ -f "$SQUASHFUSE_A" ] \
  || apt_get libsquashfuse-dev libfuse3-dev libzstd-dev zlib1g-dev liblzma-dev liblz4-dev liblzo2-dev

# -- real-weight first-run models (MTCNN faces as ONNX), made from installed packages --------
if [ ! -f resources/first-run/mtcnn/model.toml ]; then
  log "first-run models (packaging/make_first_run_models.py)"
  $PY packaging/make_first_run_models.py || log "no first-run models: needs torch + facenet-pytorch here"
fi

# -- build --------------------------------------------------------------------------------------
BUILD_S=0
if [ -z "${SKIP_BUILD:-}" ]; then
  log "PyInstaller: $VARIANT variant of ocula $VERSION (this takes a while)"
  t0=$(date +%s)
  $PY -m PyInstaller --noconfirm --clean --log-level WARN \
      --distpath "$WORK/dist" --workpath "$WORK/work" packaging/ocula.spec 2>&1 | tee "$SMOKE/pyinstaller.log"
  BUILD_S=$(( $(date +%s) - t0 ))
  log "bundle built in ${BUILD_S}s"
fi
[ -x "$BUNDLE/ocula" ] && [ -x "$BUNDLE/ocula-cli" ] || { log "no bundle at $BUNDLE"; exit 1; }
# On Linux the console flag means nothing, so the two executables are the same bytes
# (each ~70 MB: the bootloader + every Python module). Keep one; ocula-cli links to it.
if [ ! -L "$BUNDLE/ocula-cli" ] && cmp -s "$BUNDLE/ocula" "$BUNDLE/ocula-cli"; then
  ln -sf ocula "$BUNDLE/ocula-cli"
fi

# -- smoke tests on the frozen app ------------------------------------------------------------------
log "ocula-cli --version"
VERSION_OUT=$("$BUNDLE/ocula-cli" --version 2>&1 | tail -1)
echo "$VERSION_OUT"
VERSION_OK=false; [ "$VERSION_OUT" = "ocula $VERSION" ] && VERSION_OK=true

log "ocula-cli --self-test"
t0=$(date +%s.%N)
set +e
OCULA_SELFTEST_REPORT="$ROOT/$SMOKE/selftest-report.json" "$BUNDLE/ocula-cli" --self-test \
    > "$SMOKE/selftest.log" 2>&1
SELFTEST_RC=$?
set -e
SELFTEST_S=$(python3 -c "import time; print(round(time.time() - $t0, 1))")
grep -v -E "Loading weights|^\s*$" "$SMOKE/selftest.log" | tail -12

GUI_OK=false; GUI_SHOWN_S=""; SHOT=""
if command -v Xvfb >/dev/null; then
  Xvfb :97 -screen 0 1280x800x24 -nolisten tcp >/dev/null 2>&1 &
  XVFB_PID=$!
  sleep 2
  log "GUI start-up probe under Xvfb"
  set +e
  PROBE=$(DISPLAY=:97 OCULA_STARTUP_PROBE=1 OCULA_HOME="$ROOT/$SMOKE/home" timeout 120 "$BUNDLE/ocula" 2>"$SMOKE/gui-probe.log")
  set -e
  echo "$PROBE" | tee -a "$SMOKE/gui-probe.log"
  GUI_SHOWN_S=$(echo "$PROBE" | sed -n 's/^OCULA_WINDOW_SHOWN \([0-9.]*\).*/\1/p')
  log "GUI for a screenshot"
  DISPLAY=:97 OCULA_HOME="$ROOT/$SMOKE/home" "$BUNDLE/ocula" >"$SMOKE/gui.log" 2>&1 &
  GUI_PID=$!
  sleep "${GUI_WAIT_S:-12}"
  if kill -0 "$GUI_PID" 2>/dev/null; then
    GUI_OK=true
    if command -v import >/dev/null; then
      DISPLAY=:97 import -window root "$SMOKE/gui.png" && SHOT="$SMOKE/gui.png"
    elif command -v xwd >/dev/null; then
      DISPLAY=:97 xwd -root -silent -out "$SMOKE/gui.xwd" && SHOT="$SMOKE/gui.xwd"
    fi
    kill "$GUI_PID" 2>/dev/null || true
  else
    log "the GUI exited early: see $SMOKE/gui.log"
  fi
  wait "$GUI_PID" 2>/dev/null || true
  kill "$XVFB_PID" 2>/dev/null || true
  [ -n "$GUI_SHOWN_S" ] || GUI_OK=false
else
  log "no Xvfb: GUI not started"
fi

SELFTEST_OK=false; [ "$SELFTEST_RC" = 0 ] && SELFTEST_OK=true

# -- package (after the smoke tests, which need minutes less than packing 4 GB) ---------------
cp resources/ocula.desktop resources/icons/ocula.png packaging/linux/install.sh "$BUNDLE/"
chmod +x "$BUNDLE/install.sh"
if command -v desktop-file-validate >/dev/null; then
  desktop-file-validate "$BUNDLE/ocula.desktop"
fi
BUNDLE_BYTES=$(du -sb "$BUNDLE" | cut -f1)
PACK_S=0; TAR_BYTES=0; TARBALL=""; TARBALL_OK=false
if [ -z "${SKIP_PACK:-}" ]; then
  log "bundle: $(du -sh "$BUNDLE" | cut -f1) in $BUNDLE; packing dist/$NAME.tar.gz"
  t0=$(date +%s)
  tar -C "$WORK/dist" --transform "s,^ocula,$NAME,S" -cf - ocula | gzip -1 > "dist/$NAME.tar.gz"
  PACK_S=$(( $(date +%s) - t0 ))
  TAR_BYTES=$(stat -c %s "dist/$NAME.tar.gz")
  TARBALL=dist/$NAME.tar.gz
  # The package itself: unpack it elsewhere and run the unpacked ocula-cli (through its
  # symlink), so a broken link or a missing file in the archive is caught here.
  log "checking the unpacked tarball"
  UNPACK=$(mktemp -d)
  tar -xzf "$TARBALL" -C "$UNPACK"
  [ "$("$UNPACK/$NAME/ocula-cli" --version 2>&1 | tail -1)" = "ocula $VERSION" ] && TARBALL_OK=true
  rm -rf "$UNPACK"
fi

DEB=""; DEB_BYTES=0
if [ -z "${SKIP_PACK:-}" ] && command -v dpkg-deb >/dev/null; then
  log "Debian package"
  DEB=$(packaging/linux/build_deb.sh "$BUNDLE" "$VERSION" "$VARIANT" dist)
  DEB_BYTES=$(stat -c %s "$DEB")
  log "$DEB: $(du -h "$DEB" | cut -f1)"
fi

APPIMAGE=""; APPIMAGE_BYTES=0; APPIMAGE_OK=false; APPIMAGE_MODE=""
if [ -n "${SKIP_PACK:-}" ]; then :
elif ! command -v mksquashfs >/dev/null || [ ! -f "$SQUASHFUSE_A" ]; then
  log "no AppImage: needs squashfs-tools and libsquashfuse-dev libfuse3-dev libzstd-dev" \
      "zlib1g-dev liblzma-dev liblz4-dev liblzo2-dev (apt), which could not be installed"
else
  log "AppImage"
  APPIMAGE=$(packaging/linux/build_appimage.sh "$BUNDLE" "$VERSION" "$VARIANT" dist)
  APPIMAGE_BYTES=$(stat -c %s "$APPIMAGE")
  # run the file itself (FUSE mount), else unpacked to a temporary folder by its runtime
  if [ "$("$APPIMAGE" --version 2>/dev/null | tail -1)" = "ocula $VERSION" ]; then
    APPIMAGE_OK=true; APPIMAGE_MODE=fuse
  elif [ "$("$APPIMAGE" --appimage-extract-and-run --version 2>&1 | tail -1)" = "ocula $VERSION" ]; then
    APPIMAGE_OK=true; APPIMAGE_MODE=extract-and-run
  fi
  log "$APPIMAGE: $(du -h "$APPIMAGE" | cut -f1), runs: $APPIMAGE_OK ($APPIMAGE_MODE)"
fi

cat > "$SMOKE/result.json" <<EOF
{
  "date": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "version": "$VERSION",
  "variant": "$VARIANT",
  "build_seconds": $BUILD_S,
  "pack_seconds": $PACK_S,
  "bundle_bytes": $BUNDLE_BYTES,
  "tarball": "$TARBALL",
  "tarball_bytes": $TAR_BYTES,
  "tarball_runs": $TARBALL_OK,
  "deb": "$DEB",
  "deb_bytes": $DEB_BYTES,
  "appimage": "$APPIMAGE",
  "appimage_bytes": $APPIMAGE_BYTES,
  "appimage_runs": $APPIMAGE_OK,
  "appimage_mode": "$APPIMAGE_MODE",
  "version_output": "$VERSION_OUT",
  "version_ok": $VERSION_OK,
  "selftest_exit_code": $SELFTEST_RC,
  "selftest_ok": $SELFTEST_OK,
  "selftest_wall_seconds": $SELFTEST_S,
  "gui_ok": $GUI_OK,
  "gui_window_shown_seconds": "${GUI_SHOWN_S}",
  "screenshot": "$SHOT"
}
EOF
cat "$SMOKE/result.json"
$VERSION_OK && $SELFTEST_OK && $GUI_OK && { [ -n "${SKIP_PACK:-}" ] || $TARBALL_OK; } \
  && { [ -z "$APPIMAGE" ] || $APPIMAGE_OK; }
