#!/usr/bin/env bash
# Make sure promtool (Prometheus's rule checker) is at .cache/bin/promtool for the alert-rule tests
# (tests/unit/deploy/test_alert_rules.py): one on PATH is used as it is; else Debian's prometheus package is
# downloaded and only its promtool unpacked (no server installed or started). Without apt-get the tests skip, saying
# why; this script never fails the build.
set -u
cd "$(dirname "$0")/.."
TARGET=.cache/bin/promtool

if command -v promtool >/dev/null || [ -x "$TARGET" ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null || ! command -v dpkg >/dev/null; then
  echo "no promtool and no apt-get here; the alert-rule tests will skip"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if ! (cd "$work" && apt-get download prometheus >/dev/null 2>&1); then
  (apt-get update -q >/dev/null 2>&1 && cd "$work" && apt-get download prometheus >/dev/null 2>&1) || true
fi
package=$(ls "$work"/prometheus_*.deb 2>/dev/null | head -1)
if [ -n "$package" ] && dpkg -x "$package" "$work/x" && [ -x "$work/x/usr/bin/promtool" ]; then
  mkdir -p "$(dirname "$TARGET")"
  cp "$work/x/usr/bin/promtool" "$TARGET"
  echo "installed: $("$TARGET" --version 2>&1 | head -1)"
else
  echo "promtool could not be installed; the alert-rule tests will skip"
fi
exit 0
