"""A Prometheus restarted on its old storage answers from before its outage until it scrapes
again (instant queries look back 5 minutes by default): the source must not pass those
figures off as new. A real Prometheus (Debian's), its own, stopped and started again on the
same port and storage while the exporter's figures change."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_harness import Exposition, _free_port, _serve, start_prometheus
from test_metric_sources import text

from tide_operator.adapters.sources import MetricsUnavailable, PrometheusSource

pytestmark = [pytest.mark.timeout(120), pytest.mark.asyncio]

# Long enough that a read lands between Prometheus's start and its first scrape: the window
# in which it serves the samples it kept from before it stopped.
SCRAPE_INTERVAL = 5


class Server:
    """Prometheus on a fixed port and storage, stopped and started at will."""

    def __init__(self, target: str) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="tide-prom-restart-"))
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = self.workdir / "prometheus.yml"
        self.config.write_text(
            f"global: {{scrape_interval: {SCRAPE_INTERVAL}s}}\n"
            "scrape_configs:\n"
            "  - job_name: exporter\n"
            f"    static_configs: [{{targets: ['{target}']}}]\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        # The product's query settings: the default 5-minute look-back.
        self.process = start_prometheus(self.config, self.workdir / "data", self.port)

    def stop(self) -> None:
        assert self.process is not None
        self.process.terminate()
        self.process.wait(timeout=30)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


@pytest.fixture
def exporter() -> Iterator[Exposition]:
    yield from _serve(Exposition())


@pytest.fixture
def server(exporter: Exposition) -> Iterator[Server]:
    found = Server(exporter.url.removeprefix("http://").removesuffix("/metrics"))
    yield found
    found.close()


async def newest_sample(client: httpx.AsyncClient, url: str) -> float:
    """When Prometheus last scraped the exporter, by its own clock."""
    answer = await client.get(
        f"{url}/api/v1/query", params={"query": "max(timestamp(tide_exporter_up))"}
    )
    return float(answer.json()["data"]["result"][0]["value"][1])


async def first_figures(source: PrometheusSource, *, timeout: float) -> tuple[int, list[str]]:
    """The first waiting count the source gives, and what it said before it gave one."""
    said: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        try:
            return (await source.observe(["r"], now=1.0)).waiting, said
        except MetricsUnavailable as exc:
            said.append(str(exc))
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.05)


async def test_a_restarted_prometheus_is_not_read_from_before_its_outage(
    server: Server, exporter: Exposition
) -> None:
    exporter.text = text(r=(7, 0, 0, 1.0))
    server.start()
    async with httpx.AsyncClient() as client:
        source = PrometheusSource(server.url, client=client, timeout=2)
        assert (await first_figures(source, timeout=30))[0] == 7
        # Prometheus scrapes once more after the last read the source acted on (a scrape
        # interval shorter than the polling interval makes that the rule): the sample it
        # keeps is newer than anything the source saw, and still from before the outage.
        seen = await newest_sample(client, server.url)
        deadline = time.monotonic() + 3 * SCRAPE_INTERVAL
        while await newest_sample(client, server.url) <= seen:
            assert time.monotonic() < deadline, "Prometheus did not scrape again"
            await asyncio.sleep(0.1)

        server.stop()
        with pytest.raises(MetricsUnavailable):
            await source.observe(["r"], now=1.0)
        # While Prometheus is away, the queue drains to 3.
        exporter.text = text(r=(3, 0, 0, 1.0))
        server.start()
        waiting, said = await first_figures(source, timeout=3 * SCRAPE_INTERVAL)
    # The 7 kept from before the outage is never read as the queue now.
    assert waiting == 3, said
    assert all("back from an outage" in s or "tide_exporter_up" in s for s in said), said
