#!/usr/bin/env bash
# System packages the tests and benchmarks use, from Debian's archive (this kind runs as
# root): prometheus + promtool (exporter and alert-rule tests), wrk (the API benchmark),
# podman and debootstrap (the image's tests).
# Idempotent: installs only what is missing.
set -euo pipefail
missing=()
command -v promtool >/dev/null && command -v prometheus >/dev/null || missing+=(prometheus)
command -v wrk >/dev/null || missing+=(wrk)
# The image's tests (tests/image): podman with runc and slirp4netns, debootstrap for the
# stand-in base image (scripts/image-build.sh).
for tool in podman runc slirp4netns debootstrap; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
    SUDO=""
    [[ $(id -u) -eq 0 ]] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
