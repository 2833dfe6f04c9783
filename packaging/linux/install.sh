#!/usr/bin/env sh
# Put this unpacked Ocula folder on the current user's menu and PATH (no root needed):
#   ./install.sh            ~/.local/bin/ocula, a menu entry and its icon
#   ./install.sh --remove   take them away again (this folder is left alone)
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
DATA=${XDG_DATA_HOME:-$HOME/.local/share}
BIN=$HOME/.local/bin
ENTRY=$DATA/applications/ocula.desktop
ICON=$DATA/icons/hicolor/256x256/apps/ocula.png

if [ "${1:-}" = "--remove" ]; then
  rm -f "$BIN/ocula" "$BIN/ocula-cli" "$ENTRY" "$ICON"
  echo "Ocula's menu entry and commands removed."
  exit 0
fi
mkdir -p "$BIN" "$(dirname "$ENTRY")" "$(dirname "$ICON")"
ln -sf "$HERE/ocula" "$BIN/ocula"
ln -sf "$HERE/ocula-cli" "$BIN/ocula-cli"
cp "$HERE/ocula.png" "$ICON"
# The entry names the executable by its full path, so it works without ~/.local/bin on PATH.
sed -e "s|^Exec=ocula|Exec=\"$HERE/ocula\"|" -e "s|^TryExec=ocula|TryExec=$HERE/ocula|" \
  "$HERE/ocula.desktop" > "$ENTRY"
command -v update-desktop-database >/dev/null 2>&1 && update-desktop-database "$DATA/applications" || true
echo "Ocula installed: menu entry $ENTRY; commands $BIN/ocula and $BIN/ocula-cli."
