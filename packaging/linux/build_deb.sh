#!/usr/bin/env bash
# Wrap a built one-folder bundle in a Debian package a user installs with one command:
#
#   packaging/linux/build_deb.sh BUNDLE_DIR VERSION VARIANT OUT_DIR   -> OUT_DIR/ocula_<ver>_<arch>.deb
#   sudo apt-get install ./ocula_<ver>_<arch>.deb
#
# Layout: the bundle under /opt/ocula, /usr/bin/ocula and ocula-cli as links into it, the
# desktop entry (MimeType: the images and videos Ocula opens) and hicolor icons, and
# postinst/postrm hooks that refresh the desktop, MIME and icon caches where those tools
# exist. Depends: only the system libraries the bundle does not carry (Qt's xcb platform
# plugin loads them; glibc), the same list tests/run.sh installs for the GUI tests.
set -euo pipefail
BUNDLE=$(cd "$1" && pwd); VERSION=$2; VARIANT=$3; OUT=$4
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$(cd "$HERE/../.." && pwd)
ARCH=$(dpkg --print-architecture)
NAME=ocula
[ "$VARIANT" = lite ] || NAME=ocula-$VARIANT
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT

mkdir -p "$STAGE/opt" "$STAGE/usr/bin" "$STAGE/usr/share/applications" "$STAGE/DEBIAN" \
         "$STAGE/usr/share/doc/$NAME"
cp -a "$BUNDLE" "$STAGE/opt/ocula"
rm -f "$STAGE/opt/ocula/install.sh"  # the tarball's per-user installer: the package does it
ln -s /opt/ocula/ocula "$STAGE/usr/bin/ocula"
ln -s /opt/ocula/ocula "$STAGE/usr/bin/ocula-cli"
sed -e 's|^Exec=.*|Exec=/usr/bin/ocula %F|' -e 's|^TryExec=.*|TryExec=/usr/bin/ocula|' \
    "$ROOT/resources/ocula.desktop" > "$STAGE/usr/share/applications/org.ocula.Ocula.desktop"
for size in 48 128 256 512; do
  dir="$STAGE/usr/share/icons/hicolor/${size}x${size}/apps"
  mkdir -p "$dir"
  python3 - "$ROOT/resources/icons/ocula.png" "$dir/ocula.png" "$size" <<'PY' 2>/dev/null \
    || cp "$ROOT/resources/icons/ocula.png" "$dir/ocula.png"
import sys
from PIL import Image
Image.open(sys.argv[1]).resize((int(sys.argv[3]),) * 2, Image.LANCZOS).save(sys.argv[2])
PY
done
cp "$ROOT/LICENSE" "$STAGE/usr/share/doc/$NAME/copyright" 2>/dev/null || true
[ -f "$ROOT/THIRD_PARTY_LICENSES" ] && cp "$ROOT/THIRD_PARTY_LICENSES" "$STAGE/usr/share/doc/$NAME/"

INSTALLED_KB=$(du -sk --apparent-size "$STAGE" | cut -f1)
cat > "$STAGE/DEBIAN/control" <<CONTROL
Package: $NAME
Version: $VERSION
Section: graphics
Priority: optional
Architecture: $ARCH
Maintainer: Ocula developers <ocula@localhost>
Installed-Size: $INSTALLED_KB
Depends: libc6 (>= 2.31), libgl1, libegl1, libfontconfig1, libdbus-1-3, libxkbcommon-x11-0, libxcb-cursor0, libxcb-icccm4, libxcb-keysyms1, libxcb-image0, libxcb-render-util0, libxcb-randr0, libxcb-shape0, libxcb-xfixes0, libxcb-xinerama0, libxcb-xkb1
Conflicts: $( [ "$NAME" = ocula ] && echo ocula-cpu, ocula-cuda || echo ocula )
Description: Vision models on your own computer ($VARIANT build)
 Captions, detections, segmentations, restorations and attention maps from
 modern vision models, run locally on ONNX Runtime$( [ "$VARIANT" = lite ] || echo " and PyTorch" ).
 Browse a catalog backed by the Hugging Face hub, drop images, folders or videos.
CONTROL
for hook in postinst postrm; do
  cat > "$STAGE/DEBIAN/$hook" <<'HOOK'
#!/bin/sh
set -e
command -v update-desktop-database >/dev/null && update-desktop-database -q /usr/share/applications || true
command -v update-mime-database >/dev/null && update-mime-database /usr/share/mime || true
command -v gtk-update-icon-cache >/dev/null && gtk-update-icon-cache -q -t /usr/share/icons/hicolor || true
exit 0
HOOK
  chmod 0755 "$STAGE/DEBIAN/$hook"
done
mkdir -p "$OUT"
DEB="$OUT/${NAME}_${VERSION}_${ARCH}.deb"
dpkg-deb --build --root-owner-group -Zxz -z1 "$STAGE" "$DEB" >/dev/null
echo "$DEB"
