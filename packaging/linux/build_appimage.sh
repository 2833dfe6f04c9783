#!/usr/bin/env bash
# Wrap a built one-folder bundle in an AppImage: one file a user downloads, marks
# executable and runs on any x86_64 Linux with FUSE (or with --appimage-extract-and-run).
#
#   packaging/linux/build_appimage.sh BUNDLE_DIR VERSION VARIANT OUT_DIR
#       -> prints OUT_DIR/Ocula-<version>-<arch>[-<variant>].AppImage
#
# An AppImage (type 2) is the AppImage runtime, a static ELF program, followed by a
# squashfs image of an AppDir. appimagetool only downloads a released runtime and calls
# mksquashfs; neither the tool nor the released runtime is in a registry we can reach, so:
# * the runtime is built here from AppImage's own source (packaging/linux/appimage/runtime.c,
#   github.com/AppImage/type2-runtime at caf24f9, MIT; unmodified) against Debian's static
#   libsquashfuse/libfuse3 (apt: libsquashfuse-dev libfuse3-dev and the compressors), with a
#   fuseprivate.h that Debian's squashfuse 0.1.105 does not install;
# * the AppDir (AppRun -> the bundle's `ocula`, desktop entry, icon, .DirIcon, hicolor
#   icon) is packed by Debian's mksquashfs with zstd, as appimagetool does;
# * the type-2 magic bytes "AI\x02" go at offset 8 of the file (ELF padding), where desktop
#   integration tools look for them.
# Not done: update information and signatures (appimagetool's optional -u / --sign).
set -euo pipefail
BUNDLE=$(cd "$1" && pwd); VERSION=$2; VARIANT=$3; OUT=$4
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$(cd "$HERE/../.." && pwd)
ARCH=$(uname -m)
SRC=$HERE/appimage
WORK=$ROOT/build/appimage
mkdir -p "$WORK" "$OUT"
NAME=Ocula-$VERSION-$ARCH
[ "$VARIANT" = lite ] || NAME=$NAME-$VARIANT

# -- the runtime (rebuilt when its sources change) --------------------------------------------
RUNTIME=$WORK/runtime-$ARCH
STAMP=$(cat "$SRC/runtime.c" "$SRC/data_sections.ld" "$SRC/include/squashfuse/fuseprivate.h" | sha256sum | cut -c1-16)
if [ ! -x "$RUNTIME" ] || [ "$(cat "$RUNTIME.stamp" 2>/dev/null)" != "$STAMP" ]; then
  gcc -std=gnu99 -Os -D_FILE_OFFSET_BITS=64 -DGIT_COMMIT='"caf24f9"' \
      -I"$SRC/include" -I/usr/include/squashfuse -I/usr/include/fuse3 \
      -T "$SRC/data_sections.ld" -ffunction-sections -fdata-sections -Wl,--gc-sections -static \
      "$SRC/runtime.c" -lsquashfuse_ll -lsquashfuse -lzstd -lz -llzma -llz4 -llzo2 -lfuse3 \
      -lpthread -ldl -o "$RUNTIME.tmp" 2> "$WORK/runtime-build.log" \
    || { cat "$WORK/runtime-build.log" >&2; exit 1; }
  printf 'AI\002' | dd of="$RUNTIME.tmp" bs=1 seek=8 conv=notrunc status=none
  mv "$RUNTIME.tmp" "$RUNTIME"
  echo "$STAMP" > "$RUNTIME.stamp"
fi

# -- the AppDir ------------------------------------------------------------------------------
APPDIR=$(mktemp -d "$WORK/AppDir.XXXXXX")
trap 'rm -rf "$APPDIR" "$WORK/$NAME.squashfs"' EXIT
mkdir -p "$APPDIR/usr/lib" "$APPDIR/usr/share/icons/hicolor/256x256/apps"
cp -a "$BUNDLE" "$APPDIR/usr/lib/ocula"
rm -f "$APPDIR/usr/lib/ocula/install.sh" "$APPDIR/usr/lib/ocula/ocula.desktop" \
      "$APPDIR/usr/lib/ocula/ocula.png"  # the tarball's extras
ln -s usr/lib/ocula/ocula "$APPDIR/AppRun"  # the bootloader finds _internal via /proc/self/exe
sed -e 's|^Exec=.*|Exec=ocula %F|' -e '/^TryExec=/d' "$ROOT/resources/ocula.desktop" \
    > "$APPDIR/ocula.desktop"
echo "X-AppImage-Version=$VERSION" >> "$APPDIR/ocula.desktop"
cp "$ROOT/resources/icons/ocula.png" "$APPDIR/ocula.png"
cp "$ROOT/resources/icons/ocula.png" "$APPDIR/usr/share/icons/hicolor/256x256/apps/ocula.png"
ln -s ocula.png "$APPDIR/.DirIcon"

# -- squashfs + runtime ------------------------------------------------------------------------
mksquashfs "$APPDIR" "$WORK/$NAME.squashfs" -root-owned -noappend -comp zstd -b 1M \
    -quiet -no-progress >/dev/null
cat "$RUNTIME" "$WORK/$NAME.squashfs" > "$OUT/$NAME.AppImage.tmp"
chmod 755 "$OUT/$NAME.AppImage.tmp"
mv "$OUT/$NAME.AppImage.tmp" "$OUT/$NAME.AppImage"
echo "$OUT/$NAME.AppImage"
