#!/usr/bin/env bash
# Debian's headless Chromium for the app's browser tests (tests/test_app.py), installed with apt when it
# is missing. Playwright drives it through executable_path: no browser is downloaded at run time.
set -euo pipefail
if command -v chromium >/dev/null; then exit 0; fi
for _ in 1 2; do
  if DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/tmp/install_chromium.log 2>&1; then
    chromium --version; exit 0
  fi
  DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null 2>&1 || true   # stale or missing package lists
done
cat /tmp/install_chromium.log; echo "apt-get install chromium failed" >&2; exit 1
