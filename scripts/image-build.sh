#!/usr/bin/env bash
# Build Tide's image with no Docker daemon and no registry: Debian's podman builds the
# unchanged Dockerfile on a local stand-in for the Python base image.
#
#   scripts/image-build.sh [EXTRA_TAG...]
#
# prints key=value lines on stdout (image_id, the seconds taken, the size, the podman
# configuration to run it with); progress goes to stderr.
#
# The base image (the Dockerfile's PYTHON_IMAGE) is made once with debootstrap: a minimal
# Debian of the same release with the same Python minor version, imported into podman's
# storage as localhost/python:<version>-<release>-debian and reused while it exists (delete
# it with `podman rmi` to rebuild it). Everything this script keeps between runs lives
# outside the repository, under TIDE_IMAGE_STATE (default /var/tmp/tide-image): the podman
# configuration and the timings of the last build.
#
# Runs as root and installs what it needs from Debian (podman, runc, slirp4netns,
# debootstrap) when missing, as CI machines of this kind allow. The figures (seconds, size)
# also go to $TIDE_IMAGE_STATE/build.env. TIDE_IMAGE_BASE names another base image (a
# fresh one is built when it does not exist: bench/bench_image.py measures a cold build so).
set -euo pipefail
cd "$(dirname "$0")/.."

STATE=${TIDE_IMAGE_STATE:-/var/tmp/tide-image}
TAG=${TIDE_IMAGE_TAG:-localhost/tide:dev}
mkdir -p "$STATE"
log() { printf '== %s\n' "$*" >&2; }
die() { printf 'image-build: %s\n' "$*" >&2; exit 1; }

# --- tools ------------------------------------------------------------------------------
missing=()
command -v podman >/dev/null || missing+=(podman)
command -v runc >/dev/null || missing+=(runc)
command -v slirp4netns >/dev/null || missing+=(slirp4netns)
command -v debootstrap >/dev/null || missing+=(debootstrap)
# debootstrap, chroot and podman's rootful storage (shared by every checkout here) need
# root, as on CI machines of this kind.
[[ $(id -u) -eq 0 ]] || die "run as root: debootstrap and rootful podman need it"
if ((${#missing[@]})); then
    log "installing ${missing[*]} from Debian"
    { apt-get -o DPkg::Lock::Timeout=600 update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 \
            install -y -qq "${missing[@]}" >/dev/null; } ||
        die "cannot install ${missing[*]} with apt-get; install them and run again"
fi

# crun (podman's default here) refuses hybrid cgroups, and podman's default ulimits are
# above this kind's hard limits: runc and explicit ulimits, in a file of our own so the
# machine's /etc/containers stays untouched.
export CONTAINERS_CONF="$STATE/containers.conf"
cat >"$CONTAINERS_CONF" <<'CONF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
CONF

# --- the base image ---------------------------------------------------------------------
# The Dockerfile names its base by the official image's tag (python:3.11-slim-bookworm);
# the stand-in is Debian's own Python of that release, which must be the same minor version.
default_base=$(sed -n 's/^ARG PYTHON_IMAGE=//p' Dockerfile)
[[ $default_base =~ ^python:([0-9]+\.[0-9]+)-slim-([a-z]+)$ ]] ||
    die "cannot read the Python version and Debian release from 'ARG PYTHON_IMAGE=$default_base' in the Dockerfile"
py_version=${BASH_REMATCH[1]}
release=${BASH_REMATCH[2]}
BASE=${TIDE_IMAGE_BASE:-localhost/python:$py_version-$release-debian}
# The machine's own Debian mirror when it names one (apt works here, so it answers).
mirror=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)
mirror=${mirror:-http://deb.debian.org/debian}

# One base build at a time on a machine (test runs may build side by side).
exec 9>"$STATE/base.lock"
flock 9
if podman image exists "$BASE"; then
    log "base $BASE: reused"
    base_seconds=0
else
    log "base $BASE: debootstrap $release"
    start=$SECONDS
    rootfs=$(mktemp -d "$STATE/rootfs.XXXXXX")
    trap 'rm -rf "$rootfs"' EXIT
    debootstrap --variant=minbase "$release" "$rootfs" "$mirror" >"$STATE/debootstrap.log" 2>&1 ||
        die "debootstrap failed; see $STATE/debootstrap.log"
    chroot "$rootfs" /usr/bin/env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends \
        python3 python3-venv python-is-python3 ca-certificates >>"$STATE/debootstrap.log" 2>&1 ||
        die "installing Python in the base failed; see $STATE/debootstrap.log"
    got=$(chroot "$rootfs" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    [[ $got == "$py_version" ]] ||
        die "Debian $release ships Python $got, the Dockerfile's base is Python $py_version"
    chroot "$rootfs" apt-get clean
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/* "$rootfs"/etc/resolv.conf
    tar -C "$rootfs" -c . | podman import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$BASE" >/dev/null 2>&1
    rm -rf "$rootfs"
    trap - EXIT
    base_seconds=$((SECONDS - start))
fi
flock -u 9

# --- Tide's image -----------------------------------------------------------------------
# pip in the build talks to the package index through this machine's TLS trust store
# (egress here re-signs TLS): the host's CA bundle is mounted for the build only and
# nothing of it lands in a layer.
pipconf=$(mktemp -d "$STATE/pip.XXXXXX")
trap 'rm -rf "$pipconf"' EXIT
cp "${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}" "$pipconf/ca.pem"
printf '[global]\ncert = /etc/xdg/pip/ca.pem\ntimeout = 180\n' >"$pipconf/pip.conf"
chmod -R a+rX "$pipconf"

version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
# The source label only when the clone says where it came from over the web.
source=$(git config --get remote.origin.url 2>/dev/null || true)
[[ $source == https://* ]] || source=""
log "image $TAG ($version, $revision) on $BASE"
start=$SECONDS
podman build --network host --layers \
    -v "$pipconf:/etc/xdg/pip:ro" \
    --build-arg "PYTHON_IMAGE=$BASE" \
    --build-arg "VERSION=$version" \
    --build-arg "REVISION=$revision" \
    --build-arg "SOURCE=$source" \
    --iidfile "$pipconf/iid" -t "$TAG" -f Dockerfile . >"$STATE/build.log" 2>&1 ||
    { tail -n 40 "$STATE/build.log" >&2; die "podman build failed; see $STATE/build.log"; }
image_seconds=$((SECONDS - start))
# By ID, not by tag: another build may retag TAG meanwhile.
id=$(<"$pipconf/iid")
id=${id#sha256:}
for extra in "$@"; do podman tag "$id" "$extra"; done
size=$(podman image inspect --format '{{.Size}}' "$id")
# Earlier builds of Tide's image that no tag and no container holds any more (each is a
# few hundred MB), and build-stage leftovers older than two hours (every checkout on the
# machine builds here; a dependency layer still under a recent build stays, as do tagged
# images and the base).
podman image prune --force --filter label=org.opencontainers.image.title=tide >/dev/null 2>&1 || true
podman image prune --force --filter until=2h >/dev/null 2>&1 || true
cat >"$STATE/build.env" <<ENV
state=$STATE
containers_conf=$CONTAINERS_CONF
base_seconds=$base_seconds
image_seconds=$image_seconds
image_bytes=$size
image_id=$id
ENV
log "base ${base_seconds}s, image ${image_seconds}s, $((size / 1000000)) MB"
cat "$STATE/build.env"
