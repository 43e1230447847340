"""``tide load``: drive the API the way clients do, then report what happened.

Three shapes: a burst (N jobs as fast as the API takes them), a steady rate for a
duration (open loop: requests leave on schedule whatever the latency), or a per-task
trace file (CSV ``arrival,duration[,queue]``, the simulator's format). Each job runs
``tide.samples.io_bound`` for its duration, so the work is known. With ``--wait`` (the
default) it follows the jobs to the end and prints completed counts and waits (start
minus submission, from the job rows).
"""

from __future__ import annotations

import csv
import os
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from threading import local

import click
import httpx

# Where `tide up` leaves the local user's API token for `tide load`.
TOKEN_FILE = "api-token"


@dataclass(frozen=True)
class Planned:
    at: float  # seconds after the start
    seconds: float  # the task's duration


def plan_burst(count: int, durations: list[float], rng: random.Random) -> list[Planned]:
    return [Planned(0.0, rng.choice(durations)) for _ in range(count)]


def plan_rate(
    rate: float, duration: float, durations: list[float], rng: random.Random
) -> list[Planned]:
    return [Planned(i / rate, rng.choice(durations)) for i in range(int(rate * duration))]


def plan_trace(path: Path) -> list[Planned]:
    with path.open() as handle:
        rows = [r for r in csv.reader(handle) if r and not r[0].startswith("#")]
    if rows and not rows[0][0].replace(".", "", 1).isdigit():
        rows = rows[1:]  # header
    return sorted((Planned(float(r[0]), float(r[1])) for r in rows), key=lambda p: p.at)


class Client:
    """One keep-alive connection per thread; httpx clients are not shared across threads."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token, self._local = url.rstrip("/"), token, local()
        #: Refusals by reason ("HTTP 503", "ConnectError"), counted across threads.
        self.errors: Counter[str] = Counter()

    @property
    def http(self) -> httpx.Client:
        if not hasattr(self._local, "client"):
            self._local.client = httpx.Client(
                base_url=self.url,
                timeout=30,
                headers={"Authorization": f"Token {self.token}"},
            )
        return self._local.client

    def submit(self, seconds: float, *, task: str) -> str | None:
        """Submit one job: its id, or None when refused (a 4xx/5xx, or the API away)."""
        try:
            response = self.http.post("/api/jobs/", json={"task": task, "args": [seconds]})
        except httpx.HTTPError as exc:
            self.errors[_reason(exc)] += 1
            return None
        if response.status_code != 201:
            self.errors[f"HTTP {response.status_code}"] += 1
            return None
        return str(response.json()["id"])

    def jobs(self, ids: set[str], since: datetime) -> Iterator[dict[str, object]]:
        """Our jobs, newest first, paging back to ``since``."""
        url: str | None = "/api/jobs/?page_size=500"
        while url:
            page = self.http.get(url).json()
            for job in page["results"]:
                if datetime.fromisoformat(str(job["created_at"])) < since:
                    return
                if job["id"] in ids:
                    yield job
            url = page.get("next")


def run(
    *, client: Client, plan: list[Planned], task: str, wait: bool, timeout: float, echo: bool = True
) -> dict[str, float]:
    since = datetime.now().astimezone()
    started = time.perf_counter()

    def send(item: Planned) -> str | None:
        delay = started + item.at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        return client.submit(item.seconds, task=task)

    with ThreadPoolExecutor(max_workers=16) as pool:
        ids = {job_id for job_id in pool.map(send, plan) if job_id}
    submit_seconds = time.perf_counter() - started
    report: dict[str, float] = {
        "submitted": len(ids),
        "refused": len(plan) - len(ids),
        "submit_seconds": round(submit_seconds, 3),
    }
    if echo:
        reasons = ", ".join(f"{why}: {n}" for why, n in client.errors.most_common())
        click.echo(
            f"submitted {len(ids)} jobs in {submit_seconds:.1f}s ({report['refused']:.0f} refused"
            + (f": {reasons})" if reasons else ")")
        )
    if not wait or not ids:
        return report
    deadline = time.monotonic() + timeout
    final: list[dict[str, object]] = []
    while True:
        try:
            jobs = list(client.jobs(ids, since))
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            # The API is away (restarting) or answered something else: keep the last
            # reading and try again until the deadline, as a client would.
            client.errors[f"reading jobs: {_reason(exc)}"] += 1
            jobs = None
        if jobs is not None:
            final = [j for j in jobs if j["state"] in ("succeeded", "failed", "revoked")]
        if echo and sys.stdout.isatty():  # a progress line only where it can be redrawn
            click.echo(f"\r{len(final)}/{len(ids)} finished", nl=False)
        if len(final) == len(ids) or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    if echo and sys.stdout.isatty():
        click.echo("")
    waits = sorted(
        (
            datetime.fromisoformat(str(j["started_at"]))
            - datetime.fromisoformat(str(j["created_at"]))
        ).total_seconds()
        for j in final
        if j["started_at"]
    )
    report.update(
        completed=sum(1 for j in final if j["state"] == "succeeded"),
        failed=sum(1 for j in final if j["state"] != "succeeded"),
        # Still queued or running when --timeout ran out (or unreadable then).
        unfinished=len(ids) - len(final),
        drain_seconds=round(time.perf_counter() - started, 3),
    )
    if waits:
        report.update(
            wait_p50=round(statistics.median(waits), 3),
            wait_p95=round(waits[int(0.95 * (len(waits) - 1))], 3),
            wait_max=round(waits[-1], 3),
        )
    return report


def _reason(exc: BaseException) -> str:
    """A refusal's reason in a word: the exception's type (ConnectError, ReadTimeout)."""
    return type(exc).__name__


@click.command()
@click.option("--url", default="http://127.0.0.1:8000", show_default=True, envvar="TIDE_URL")
@click.option("--token", envvar="TIDE_TOKEN", help="API token (default: the local user's).")
@click.option("--burst", type=int, help="Submit N jobs at once.")
@click.option("--rate", type=float, help="Jobs per second, for --duration seconds.")
@click.option("--duration", type=float, default=60, show_default=True)
@click.option(
    "--trace",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Per-task CSV: arrival,duration[,queue].",
)
@click.option(
    "--durations",
    default="0.2,0.5,1,2",
    show_default=True,
    help="Task durations to draw from (seconds), for --burst and --rate.",
)
@click.option("--task", default="tide.samples.io_bound", show_default=True)
@click.option("--wait/--no-wait", default=True, show_default=True)
@click.option("--timeout", type=float, default=600, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def load(
    url: str,
    token: str | None,
    burst: int | None,
    rate: float | None,
    duration: float,
    trace: Path | None,
    durations: str,
    task: str,
    wait: bool,
    timeout: float,
    seed: int,
) -> None:
    """Drive the API like clients would; print submitted and completed counts and waits."""
    shapes = [burst is not None, rate is not None, trace is not None]
    if sum(shapes) != 1:
        raise click.UsageError("give exactly one of --burst, --rate, --trace")
    try:
        choices = [float(d) for d in durations.split(",") if d.strip()]
    except ValueError:
        raise click.BadParameter(
            f"not a list of seconds: {durations!r}", param_hint="--durations"
        ) from None
    rng = random.Random(seed)
    if burst is not None:
        plan = plan_burst(burst, choices, rng)
    elif rate is not None:
        plan = plan_rate(rate, duration, choices, rng)
    else:
        assert trace is not None
        plan = plan_trace(trace)
    if token is None:
        saved = Path(os.environ.get("TIDE_VAR_DIR", "var")) / TOKEN_FILE
        if not saved.exists():
            raise click.UsageError(f"no --token and no {saved}: start `tide up` first")
        token = saved.read_text().strip()
    client = Client(url, token)
    report = run(client=client, plan=plan, task=task, wait=wait, timeout=timeout)
    for key, value in report.items():
        click.echo(f"{key:>15}: {value}")
    for why, count in client.errors.most_common():
        click.echo(f"{'error':>15}: {why}: {count}", err=True)
    if plan and not report["submitted"]:
        # Nothing got in: say where we knocked, and fail the command.
        raise click.ClickException(f"the API at {url} took no job; is `tide up` running?")
