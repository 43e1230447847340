"""Benchmark of the jobs API and the workers, on this machine's PostgreSQL and Redis.

Figures, in one run:
1. raw ``apply_async`` rate of ``tide.samples.add`` (the broker alone: the baseline);
2. API submissions per second through gunicorn (2 workers), driven by ``wrk`` with
   keep-alive connections, with its latency percentiles; the API/raw ratio; the same with
   the token cache off (``TIDE_TOKEN_CACHE_SECONDS=0``), for its ratio;
3. p50/p99 submit latency at a fixed offered load of 200 jobs/s (open loop: latency is
   measured from each request's scheduled time, so a stall is not hidden);
4. bulk submission (``POST /api/jobs/bulk/``, BULK_SIZE jobs a request, two clients for
   the two API processes) in jobs per second, and its ratio to the raw ``apply_async``
   rate of figure 1;
5. end-to-end completed tasks per second for 1, 2 and 4 worker processes, from the job
   rows' own timestamps (first start to last finish).

``--quick`` skips the token-cache baseline and the end-to-end runs (figures 2b and 5).
``TIDE_BENCH_PORT`` and ``TIDE_BENCH_DB`` move the API off 8765 and the database off
``tide_bench`` (several checkouts on one machine).

Prints a table and saves ``bench/results/api.json``. Needs ``wrk`` (Debian package);
``make bench`` installs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from scratch_databases import recreate

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RESULTS = ROOT / "bench" / "results"
DB = os.environ.get("TIDE_BENCH_DB", "tide_bench")
PORT = int(os.environ.get("TIDE_BENCH_PORT", "8765"))
BODY = json.dumps({"task": "tide.samples.add", "args": [1, 2]})
BULK_SIZE = 500
BULK_BODY = json.dumps({"jobs": [{"task": "tide.samples.add", "args": [1, 2]}] * BULK_SIZE})


def environment() -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tide.settings.local",
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{DB}",
        "CELERY_BROKER_KEYPREFIX": f"tide-bench-{uuid.uuid4().hex[:6]}:",
        "PYTHONUNBUFFERED": "1",
    }


def wait_http(path: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=1)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"API did not answer {path}")


def wrk_run(token: str, *, seconds: int, connections: int) -> dict[str, float]:
    script = Path(tempfile.mkdtemp()) / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(BODY)}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Token {token}"\n'
    )
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(script),
            f"http://127.0.0.1:{PORT}/api/jobs/",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"API answered errors under load:\n{out}")

    def ms(label: str) -> float:
        match = re.search(rf"{label}\s+([\d.]+)(us|ms|s)", out)
        assert match, out
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return {"jobs_per_s": rps, "p50_ms": ms("50%"), "p99_ms": ms("99%")}


def fixed_rate(token: str, *, rate: float, seconds: float) -> dict[str, float]:
    """Open-loop load: request i is due at start + i/rate; latency counts from then.

    asyncio on keep-alive connections with the request bytes prepared once: the generator
    shares the machine's two cores with the API, so it must cost little (its own CPU time
    per request is reported). A request goes out on the first idle connection when it is
    due; if none is idle a new one is opened, so a slow server cannot hold requests back
    (no coordinated omission).
    """
    request = (
        "POST /api/jobs/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/json\r\n"
        f"Authorization: Token {token}\r\nContent-Length: {len(BODY)}\r\n\r\n{BODY}"
    ).encode()

    async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
        await reader.readexactly(length)
        if status != 201:
            raise RuntimeError(f"status {status}")

    async def run() -> list[float]:
        idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        latencies: list[float] = []

        async def one(due: float) -> None:
            conn = idle.pop() if idle else None
            if conn is not None:
                try:
                    await exchange(*conn)
                except (asyncio.IncompleteReadError, ConnectionError):
                    # The server closed this idle keep-alive connection (gunicorn's
                    # keepalive timeout) before reading the request: send it on a new one.
                    conn[1].close()
                    conn = None
            if conn is None:
                conn = await asyncio.open_connection("127.0.0.1", PORT)
                await exchange(*conn)
            latencies.append(time.perf_counter() - due)
            idle.append(conn)

        count = int(rate * seconds)
        start = time.perf_counter() + 0.2
        pending = []
        for i in range(count):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            pending.append(asyncio.create_task(one(due)))
        await asyncio.gather(*pending)
        for _, writer in idle:
            writer.close()
        return latencies

    cpu = time.process_time()
    latencies = sorted(asyncio.run(run()))
    count = len(latencies)
    return {
        "offered_per_s": rate,
        "requests": count,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(0.99 * (count - 1))],
        "max_ms": 1000 * latencies[-1],
        "generator_cpu_ms_per_request": 1000 * (time.process_time() - cpu) / count,
    }


def bulk_rate(token: str, *, seconds: float, clients: int = 2) -> dict[str, float]:
    """Jobs per second through ``POST /api/jobs/bulk/``: each client sends BULK_SIZE jobs
    a request, back to back on a keep-alive connection, for ``seconds``."""
    import threading

    headers = {"Content-Type": "application/json", "Authorization": f"Token {token}"}
    counts = [0] * clients
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    def client(index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=60)
        while time.perf_counter() < deadline:
            sent = time.perf_counter()
            conn.request("POST", "/api/jobs/bulk/", body=BULK_BODY, headers=headers)
            answer = conn.getresponse()
            answer.read()
            if answer.status != 201:
                raise RuntimeError(f"bulk answered {answer.status}")
            latencies.append(time.perf_counter() - sent)
            counts[index] += BULK_SIZE
        conn.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    return {
        "jobs_per_request": BULK_SIZE,
        "clients": clients,
        "requests": len(latencies),
        "jobs_per_s": sum(counts) / elapsed,
        "request_p50_ms": 1000 * statistics.median(latencies),
    }


def raw_publish_rate(n: int) -> float:
    from tide.samples.tasks import add

    for _ in range(200):  # warm the connection pool
        add.apply_async((1, 2), queue="bench")
    started = time.perf_counter()
    for _ in range(n):
        add.apply_async((1, 2), queue="bench")
    return n / (time.perf_counter() - started)


def purge(queue: str) -> None:
    from tide.celery import app

    with app.connection_for_write() as conn:
        conn.default_channel.queue_purge(queue)


def end_to_end(env: dict[str, str], *, processes: int, jobs: int) -> dict[str, float]:
    from django.db.models import Max, Min

    from tide.jobs import services
    from tide.jobs.models import Job, JobState

    purge("default")
    Job.objects.all().delete()
    step = services.Step(task="tide.samples.add", args=(1, 2))
    for _ in range(jobs):
        services.submit_task(step=step, options=services.Options(queue="default"))
    worker = subprocess.Popen(
        [
            str(BIN / "celery"),
            "-A",
            "tide",
            "worker",
            "-Q",
            "default",
            "-c",
            str(processes),
            "--without-gossip",
            "--without-mingle",
            "--loglevel",
            "WARNING",
            "-n",
            f"bench-{processes}@%h",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 600
        while Job.objects.filter(state=JobState.SUCCEEDED).count() < jobs:
            if time.monotonic() > deadline or worker.poll() is not None:
                raise RuntimeError("worker did not finish the batch")
            time.sleep(0.2)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
    span = Job.objects.aggregate(first=Min("started_at"), last=Max("finished_at"))
    seconds = (span["last"] - span["first"]).total_seconds()
    return {
        "processes": processes,
        "jobs": jobs,
        "seconds": seconds,
        "completed_per_s": jobs / seconds,
    }


@contextlib.contextmanager
def running_api(env: dict[str, str]) -> Iterator[None]:
    """``tide api`` (gunicorn, 2 processes) on PORT for the duration of the block."""
    api = subprocess.Popen(
        [str(BIN / "tide"), "api", "--bind", f"127.0.0.1:{PORT}", "--workers", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_http("/healthz")
        yield
    finally:
        api.send_signal(signal.SIGTERM)
        api.wait(timeout=30)


def main() -> None:
    quick = "--quick" in sys.argv[1:]
    if not shutil.which("wrk"):
        sys.exit("wrk is missing: apt-get install wrk (make bench does it)")
    env = environment()
    recreate(DB)
    os.environ.update(env)
    subprocess.run([str(BIN / "tide"), "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)
    token = subprocess.run(
        [str(BIN / "tide"), "token", "bench"], env=env, check=True, capture_output=True, text=True
    ).stdout.strip()
    import django

    django.setup()

    results: dict[str, object] = {
        "machine": {"cores": os.cpu_count(), "loadavg_at_start": os.getloadavg()}
    }
    results["raw_apply_async_per_s"] = raw_publish_rate(5000)
    if not quick:
        with running_api({**env, "TIDE_TOKEN_CACHE_SECONDS": "0"}):
            # The same API checking the token against the database on every request: the
            # baseline for the token cache, in the same run.
            wrk_run(token, seconds=3, connections=8)  # warm-up: connections, caches
            results["api_max_token_cache_off"] = wrk_run(token, seconds=15, connections=8)
    with running_api(env):
        wrk_run(token, seconds=3, connections=8)
        results["api_max"] = wrk_run(token, seconds=15, connections=8)
        results["api_fixed_200"] = fixed_rate(token, rate=200, seconds=15)
        bulk_rate(token, seconds=3)  # warm-up
        results["bulk"] = bulk_rate(token, seconds=15)
    purge("bench")
    # The raw rate again after the API runs: the machine is shared, and a ratio against
    # one baseline taken minutes apart would hide a change in load.
    results["raw_apply_async_per_s_after"] = raw_publish_rate(5000)
    purge("bench")
    if not quick:
        results["end_to_end"] = [end_to_end(env, processes=n, jobs=2000) for n in (1, 2, 4)]
    raw = (
        float(results["raw_apply_async_per_s"]) + float(results["raw_apply_async_per_s_after"])  # type: ignore[arg-type]
    ) / 2
    api_max = results["api_max"]
    bulk = results["bulk"]
    assert isinstance(api_max, dict)
    assert isinstance(bulk, dict)
    results["api_to_raw_ratio"] = api_max["jobs_per_s"] / raw
    results["bulk_to_raw_ratio"] = bulk["jobs_per_s"] / raw
    if not quick:
        cache_off = results["api_max_token_cache_off"]
        assert isinstance(cache_off, dict)
        results["token_cache_speedup"] = api_max["jobs_per_s"] / cache_off["jobs_per_s"]
    results["machine"]["loadavg_at_end"] = os.getloadavg()  # type: ignore[index]
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "api-quick.json" if quick else "api.json"
    (RESULTS / name).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
