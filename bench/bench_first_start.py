"""Benchmark of a newcomer's first ``make up``: from a fresh clone to the start page.

For each case, in one run: ``git clone`` of this repository's HEAD into a temporary
folder (no virtualenv, nothing beside it), then ``make up`` with its own ports, a fresh
PostgreSQL database and its own Redis key prefix, timed until

* ``installed``: ``.venv/.installed`` exists (the virtualenv, uv, Tide's dependencies);
* ``start page``: ``GET /`` answers 200 (migrations applied, gunicorn serving);
* ``exporter``: the queue exporter's ``/metrics`` answers 200.

Then SIGINT, as a person's Ctrl-C (``tide up`` drains and stops).

Cases: ``warm`` uses the machine's package caches as they are (a second ``make up`` on
the same machine, or a machine whose caches someone filled); ``cold`` gives pip and uv
empty caches, so every wheel comes from PyPI, as on a fresh machine. Prints a table and
saves ``bench/results/first_start.json``. The target: the start page within 60 s.

``--source PATH`` clones another checkout (default: this one's repository), e.g. the main
branch as a newcomer gets it; ``--ports N`` uses ports N, N+1, N+2 (API, exporter, Flower)
instead of free ones, for a machine whose users each keep to a port range.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from scratch_databases import recreate

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DB = "tide_bench_first_start"
TARGET_SECONDS = 60.0


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def living(pgid: int) -> list[int]:
    """Processes of group ``pgid`` that still run (zombies left to an init that does not reap
    them hold no port and are not counted)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rpartition(")")[2].split()
            if fields[0] != "Z" and int(fields[2]) == pgid:
                pids.append(int(stat.parent.name))
    return pids


def group_gone(pgid: int, *, timeout: float) -> bool:
    """True once no process of ``pgid`` is left; at the deadline, SIGKILL them and say False."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not living(pgid):
            return True
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    return False


def run(case: str, *, source: Path, ports: int | None) -> dict[str, object]:
    database = recreate(DB)
    work = Path(tempfile.mkdtemp(prefix=f"tide-first-start-{case}-"))
    clone = work / "tide"
    # Nothing beside the clone: no ../shared, as on a newcomer's machine.
    subprocess.run(["git", "clone", "--quiet", str(source), str(clone)], check=True)
    commit = subprocess.run(
        ["git", "-C", str(clone), "rev-parse", "--short", "HEAD"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    if ports:
        port, exporter_port, flower_port = ports, ports + 1, ports + 2
    else:
        port, exporter_port, flower_port = free_port(), free_port(), free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DJANGO_", "VIRTUAL_ENV", "TIDE_", "CELERY_"))
    }
    env.update(
        DATABASE_URL=database,
        CELERY_BROKER_URL="redis://127.0.0.1:6379/0",
        CELERY_BROKER_KEYPREFIX=f"tide-bench-first-{uuid.uuid4().hex[:8]}:",
        PATH=os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if ".venv" not in p),
    )
    if case == "cold":
        env["UV_CACHE_DIR"] = str(work / "uv-cache")
        env["PIP_NO_CACHE_DIR"] = "1"
    up_args = f"--port {port} --exporter-port {exporter_port} --flower-port {flower_port} --no-ui"
    log = (work / "make-up.log").open("wb")
    started = time.monotonic()
    make = subprocess.Popen(
        ["make", "up", f"UP_ARGS={up_args}"],
        cwd=clone,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    marks: dict[str, float] = {}
    checks = {
        "installed": lambda: (clone / ".venv" / ".installed").exists(),
        "start_page": lambda: answers(f"http://127.0.0.1:{port}/"),
        "exporter": lambda: answers(f"http://127.0.0.1:{exporter_port}/metrics"),
    }
    deadline = started + 600
    try:
        while len(marks) < len(checks) and time.monotonic() < deadline:
            if make.poll() is not None:
                raise RuntimeError(f"make up exited {make.returncode}; see {log.name}")
            for name, check in checks.items():
                if name not in marks and check():
                    marks[name] = round(time.monotonic() - started, 1)
            time.sleep(0.2)
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGINT)
            try:
                make.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(make.pid, signal.SIGKILL)
                make.wait()
        # The next case reuses the ports: wait until every process of the session is gone
        # (a child still draining after make returned would hold its port).
        outlived = not group_gone(make.pid, timeout=30)
    venv_mb = sum(f.stat().st_size for f in (clone / ".venv").rglob("*") if f.is_file()) / 2**20
    result: dict[str, object] = {
        "case": case,
        "commit": commit,
        **{f"{k}_s": marks.get(k) for k in checks},
        "venv_mb": round(venv_mb),
        "within_target": marks.get("start_page", 1e9) <= TARGET_SECONDS,
        "processes_outlived_ctrl_c_30s": outlived,
    }
    shutil.rmtree(work, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", nargs="*", help="cold and/or warm (default: both)")
    parser.add_argument("--source", type=Path, default=ROOT, help="the repository to clone")
    parser.add_argument("--ports", type=int, help="first of three ports (API, exporter, Flower)")
    args = parser.parse_args()
    load = os.getloadavg()
    cases = args.cases or ["cold", "warm"]
    if set(cases) - {"cold", "warm"}:
        parser.error(f"cases are cold and warm, not {sorted(set(cases) - {'cold', 'warm'})}")
    results = [run(case, source=args.source, ports=args.ports) for case in cases]
    print(f"load average at start: {load[0]:.1f} (2 cores)")
    print(f"{'case':6} {'installed':>10} {'start page':>11} {'exporter':>9} {'venv MB':>8}")
    for r in results:
        print(
            f"{r['case']:6} {r['installed_s']!s:>10} {r['start_page_s']!s:>11}"
            f" {r['exporter_s']!s:>9} {r['venv_mb']!s:>8}"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "first_start.json").write_text(
        json.dumps(
            {
                "target_seconds": TARGET_SECONDS,
                "load_average_at_start": round(load[0], 1),
                "python": sys.version.split()[0],
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )
    if not all(r["within_target"] for r in results if r["case"] == "warm"):
        sys.exit(1)


if __name__ == "__main__":
    main()
