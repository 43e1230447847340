#!/usr/bin/env bash
# Render manifests/ (plain YAML for users without Helm) from charts/tide with
# charts/tide/ci/manifests-values.yaml, one file per part. tests/charts checks that the
# checked-in files equal a fresh render, so run this after changing the chart.
#   scripts/render-manifests.sh [OUTDIR]    (default: manifests)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-manifests}
HELM=${HELM:-.venv/bin/helm}
PYTHON=${PYTHON:-.venv/bin/python}
mkdir -p "$out"
"$HELM" template tide charts/tide --namespace tide \
    --values charts/tide/ci/manifests-values.yaml \
    | "$PYTHON" scripts/split-manifests.py "$out"
