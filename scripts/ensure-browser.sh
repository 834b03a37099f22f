#!/usr/bin/env bash
# Make sure Debian's Chromium is at /usr/bin/chromium for the playground's browser test (tests/e2e); install it with
# apt-get when it is missing and apt-get is usable (root). Playwright drives it and never downloads a browser of its
# own. Without one the browser test skips, saying why; this script never fails the build.
set -u
CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "no Chromium at $CHROMIUM and no apt-get here; the playground's browser test will skip"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "no Chromium at $CHROMIUM; install it (sudo apt-get install chromium) or the playground's browser test skips"
  exit 0
fi
echo "no Chromium at $CHROMIUM; installing Debian's (apt-get install chromium chromium-driver)"
if ! apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; then
  echo "apt-get install failed; updating the package lists and trying once more"
  apt-get update -q >/dev/null 2>&1 || true
  apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || true
fi
if [ -x "$CHROMIUM" ]; then
  echo "installed: $("$CHROMIUM" --version 2>/dev/null || echo chromium)"
else
  echo "Chromium could not be installed; the playground's browser test will skip"
fi
exit 0
