"""Benchmark of Tide's image: a cold build on a machine of this kind, the image's size, and
how long each role takes to start as the chart runs it.

Two steps:

1. cold build: ``scripts/image-build.sh`` with a base image name of its own
   (``TIDE_IMAGE_BASE``), so debootstrap, Debian's Python and every layer of the Dockerfile
   are made from nothing (packages from Debian's archive, wheels from the package index, no
   cache); that base and image are removed afterwards;
2. smoke: ``pytest tests/image`` as CI runs it (a warm build on the machine's cached base,
   then every role), its wall time, and the seconds from ``podman run`` to ready that it
   records per role.

Run it alone on the machine (``flock /tmp/tide_bench.lock python bench/bench_image.py``):
the start times are CPU-bound. Prints the table and saves ``bench/results/image.json``.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RESULTS = ROOT / "bench" / "results"


def build(env: dict[str, str], *tags: str) -> dict[str, str]:
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "image-build.sh"), *tags],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    if out.returncode != 0:
        sys.exit(f"image build failed:\n{out.stderr[-3000:]}")
    return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)


def podman(figures: dict[str, str], *args: str) -> None:
    subprocess.run(
        ["podman", *args],
        env={**os.environ, "CONTAINERS_CONF": figures["containers_conf"]},
        capture_output=True,
        check=False,
    )


def main() -> None:
    run = str(os.getpid())
    base = f"localhost/python:bench-cold-{run}"
    tag = f"localhost/tide:bench-cold-{run}"
    cold = build({**os.environ, "TIDE_IMAGE_BASE": base, "TIDE_IMAGE_TAG": tag})
    podman(cold, "rmi", "--force", tag, base)

    started = time.monotonic()
    smoke = subprocess.run(
        [str(BIN / "pytest"), "tests/image", "-q", "-p", "no:randomly"],
        env={**os.environ, "TIDE_TEST_RUN": f"bench{run}"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    smoke_seconds = round(time.monotonic() - started, 1)
    if smoke.returncode != 0:
        sys.exit(f"tests/image failed:\n{smoke.stdout[-3000:]}")
    state = Path(cold["state"])
    warm = dict(
        line.split("=", 1) for line in (state / "build.env").read_text().splitlines() if "=" in line
    )
    starts = json.loads((state / "smoke.json").read_text())["start_seconds"]

    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_average_at_end": round(os.getloadavg()[0], 2),
        "cold_base_seconds": int(cold["base_seconds"]),
        "cold_image_seconds": int(cold["image_seconds"]),
        "warm_image_seconds": int(warm["image_seconds"]),
        "image_mb": round(int(cold["image_bytes"]) / 1e6),
        "smoke_seconds_with_warm_build": smoke_seconds,
        "role_start_seconds": starts,
    }
    print(f"{'cold base (debootstrap + Python)':<36}{result['cold_base_seconds']:>8} s")
    print(f"{'cold image build':<36}{result['cold_image_seconds']:>8} s")
    print(f"{'warm image build (cached layers)':<36}{result['warm_image_seconds']:>8} s")
    print(f"{'image size':<36}{result['image_mb']:>8} MB")
    print(f"{'pytest tests/image (warm)':<36}{smoke_seconds:>8} s")
    for role, seconds in starts.items():
        print(f"{'  start: ' + role:<36}{seconds:>8} s")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "image.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
