#!/usr/bin/env bash
# Rebuilds the editable install incrementally (build/<wheel tag>). A lock serialises builds
# started from several shells at once.
set -euo pipefail
cd "$(dirname "$0")/.."
exec flock /tmp/gemma3-edge-build.lock \
  pip install --no-build-isolation --no-deps -q -e . "$@"
