#!/usr/bin/env bash
# Make sure the JavaScript document linters (Redocly's CLI for the OpenAPI documents, the AsyncAPI CLI for
# docs/asyncapi.yaml) are installed under tools/node/node_modules, exactly as tools/node/package-lock.json pins them
# (`npm ci`, lifecycle scripts off). Without npm the lint tests skip, saying why; this script never fails the build.
set -u
cd "$(dirname "$0")/../tools/node"
STAMP=node_modules/.installed-$(sha256sum package-lock.json | cut -c1-12)

if [ -f "$STAMP" ]; then
  exit 0
fi
if ! command -v npm >/dev/null; then
  echo "no npm here; the OpenAPI and AsyncAPI lint tests will skip"
  exit 0
fi
# Telemetry off: the CLIs would otherwise try to report usage on every run.
export REDOCLY_TELEMETRY=off DO_NOT_TRACK=1
if npm ci --no-audit --no-fund --ignore-scripts --loglevel=error >/dev/null 2>&1; then
  touch "$STAMP"
  echo "installed: @redocly/cli $(node_modules/.bin/redocly --version 2>/dev/null), @asyncapi/cli $(node_modules/.bin/asyncapi --version 2>/dev/null | head -1)"
else
  echo "npm ci failed; the OpenAPI and AsyncAPI lint tests will skip"
fi
exit 0
