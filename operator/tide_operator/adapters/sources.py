"""Metric sources: "what are the queue observations now", behind one small interface.

A source answers ``observe(queues, now=...)`` with one ``policy.Observation`` summed over the
pool's queues, or raises ``MetricsUnavailable``; it keeps no history of the figures (the
policy does) and makes no decision about a failure (the policy holds, then falls back).
Two implementations:

* ``PrometheusSource`` runs instant PromQL queries over Contract 1's series,
  ``sum by (queue_name)`` so the per-queue figures stay visible in logs. An empty result is
  0: a queue nobody has published to has no series yet, and scale-from-zero depends on
  reading that as "nothing waits" rather than as an error. A transport error, a timeout or a
  non-success answer is ``MetricsUnavailable``, as is the exporter itself saying its last
  broker read failed (``tide_exporter_stale`` = 1): stale figures must not look fresh.
  Empty is 0 only while a Tide exporter is live: the newest ``tide_exporter_up`` sample is
  read first, and with none (the exporter down: Prometheus marks its series stale) the
  default queries would read every queue as empty, so that is ``MetricsUnavailable`` too.
  After an outage of Prometheus itself (``PrometheusUnreachable``: no connection, a
  timeout, a 5xx), its first answers may come from its storage of before (instant queries
  look back five minutes): they are refused until that sample time has advanced, that is
  until Prometheus has scraped since it came back.
* ``ExporterSource`` scrapes the exporter's ``/metrics`` directly, parsing the text with
  prometheus-client's parser (the same parse the exporter package offers, without importing
  the Django app into the operator). A queue the exporter does not export is an error here,
  not 0: the exporter exports every configured queue from the start, so a missing one is a
  misconfiguration that would otherwise read as an empty queue and scale the pool to zero.

Both fill ``Observation.completed_total`` from ``celery_queue_completed_total`` (the
exporter's per-queue count of messages that left the queue), summed over the pool's
queues, so the policy can estimate rates. The sum is of raw counter values, not of
``increase()``: the policy keeps the history and treats a total that went down as a
counter reset (Redis lost the workers' hash, RabbitMQ's statistics restarted) and starts
its rates over. When no queue of the pool has the series (celery-exporter, RabbitMQ
without the management API) ``completed_total`` is ``None`` and the policy sizes on counts
alone. The query is fixed, not one of the ``spec.metrics.prometheus.queries`` overrides:
an override that reads other series leaves it empty, which is exactly that fallback.

Both use one ``httpx.AsyncClient`` supplied by the caller, so a thousand pools share a
connection pool, and both take the caller's clock (``now``) for the observation's time.
The operator also hands every ``ExporterSource`` one ``SharedScrapes``: the pools all scrape
the same exporter, and one scrape (fetched and parsed once) serves the pools that read it
within half a second, instead of each pool parsing every queue's series. Likewise every
``PrometheusSource`` gets one ``SharedQueries``: pools reading the same Prometheus send one
query per series (``sum by (queue_name)`` over every queue in play) instead of one each.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import httpx

from tide_contract.series import (
    EXPORTER_STALE,
    EXPORTER_UP,
    QUEUE_COMPLETED,
    QUEUE_INFLIGHT,
    QUEUE_LABEL,
    QUEUE_LENGTH,
    QUEUE_OLDEST_AGE,
    QUEUE_SCHEDULED,
    TIDE_TARGETS,
    parse_queue_series,
)
from tide_operator.core.policy import Observation, QueueObservation
from tide_operator.resources.spec import MetricsSpec, PrometheusQueries

__all__ = [
    "DEFAULT_QUERIES",
    "ExporterSource",
    "MetricSource",
    "MetricsUnavailable",
    "PrometheusSource",
    "PrometheusUnreachable",
    "QueueFigures",
    "SharedQueries",
    "SharedScrapes",
    "default_queries",
    "queue_regex",
    "source_for",
]


def _sum_by_queue(series: str, *, how: str = "sum", selector: str = "") -> str:
    # Tide's exporter and celery-exporter publish the same names; a Prometheus scraping
    # both holds two copies of every queue (a plain sum reads 200 for 100). Only Tide's
    # exporters also publish tide_exporter_up, whatever their job is named: keep theirs.
    # ``selector`` (the pool's spec.metrics.prometheus.selector) names one of several Tide
    # exporters: two releases whose brokers both have a queue "default" would add up.
    matchers = f'{QUEUE_LABEL}=~"$queues"' + (f", {selector}" if selector else "")
    return f"{how} by ({QUEUE_LABEL}) ({series}{{{matchers}}} {TIDE_TARGETS})"


def default_queries(selector: str = "") -> dict[str, str]:
    """The four figures' default PromQL, kept to the exporters ``selector`` matches."""
    return {
        "waiting": _sum_by_queue(QUEUE_LENGTH, selector=selector),
        "inflight": _sum_by_queue(QUEUE_INFLIGHT, selector=selector),
        "scheduled": _sum_by_queue(QUEUE_SCHEDULED, selector=selector),
        "oldest_age": _sum_by_queue(QUEUE_OLDEST_AGE, how="max", selector=selector),
    }


def completed_query(selector: str = "") -> str:
    return _sum_by_queue(QUEUE_COMPLETED, selector=selector)


def stale_query(selector: str = "") -> str:
    return f"max({EXPORTER_STALE}{{{selector}}})" if selector else f"max({EXPORTER_STALE})"


def newest_query(selector: str = "") -> str:
    """When Prometheus last scraped a Tide exporter: the newest ``tide_exporter_up`` sample's
    own timestamp (empty when no Tide exporter's series is live)."""
    series = f"{EXPORTER_UP}{{{selector}}}" if selector else EXPORTER_UP
    return f"max(timestamp({series}))"


DEFAULT_QUERIES: Final[Mapping[str, str]] = default_queries()
COMPLETED_QUERY: Final = completed_query()


class MetricsUnavailable(Exception):
    """The source could not give a trustworthy observation now; the message says why."""


class PrometheusUnreachable(MetricsUnavailable):
    """Prometheus itself did not answer (no connection, a timeout, a 5xx): an outage, after
    which its first answers may come from its storage of before."""


class MetricSource(Protocol):
    """Queue observations for a pool. Implementations: Prometheus, exporter scrape."""

    async def observe(self, queues: Sequence[str], *, now: float) -> Observation:
        """Sum of the figures over ``queues``, taken at ``now``; raises MetricsUnavailable."""
        ...


@dataclass(frozen=True, slots=True)
class QueueFigures:
    """Figures of one queue, as read (None where the source has no such series)."""

    waiting: float = 0.0
    inflight: float = 0.0
    scheduled: float = 0.0
    oldest_age: float | None = None
    completed: float | None = None


def _total(figures: Mapping[str, QueueFigures], *, now: float) -> Observation:
    ages = [f.oldest_age for f in figures.values() if f.oldest_age is not None]
    # One exporter gives the counter for all of a pool's queues or for none, so a sum over
    # the queues that have it is the pool's count; none at all means "no counter".
    completed = [f.completed for f in figures.values() if f.completed is not None]
    # Each queue's own figures too, when several queues each carry a counter: the policy
    # then learns a service time per queue.
    per_queue = (
        tuple(
            QueueObservation(
                name,
                waiting=round(f.waiting),
                inflight=round(f.inflight),
                completed_total=f.completed,
            )
            for name, f in sorted(figures.items())
        )
        if len(figures) > 1 and len(completed) == len(figures)
        else ()
    )
    return Observation(
        at=now,
        waiting=round(sum(f.waiting for f in figures.values())),
        inflight=round(sum(f.inflight for f in figures.values())),
        scheduled=round(sum(f.scheduled for f in figures.values())),
        oldest_age=max(ages) if ages else None,
        completed_total=sum(completed) if completed else None,
        queues=per_queue,
    )


def queue_regex(queues: Sequence[str]) -> str:
    """A PromQL-string-safe regex matching exactly ``queues`` (PromQL anchors it)."""
    # re.escape for the regex, then the backslashes doubled for the PromQL string literal.
    alternatives = "|".join(re.escape(q) for q in queues)
    return alternatives.replace("\\", "\\\\").replace('"', '\\"')


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0


# ------------------------------------------------------------------------------ Prometheus


Samples = list[dict[str, Any]]
# Above this many characters a query goes in a POST form rather than the URL (a union of a
# thousand queues' names is tens of kilobytes; Prometheus takes both).
LONG_QUERY: Final = 2000


@dataclass
class _Batch:
    """One shared query: the queues it covers, gathered until it is sent, and its answer."""

    at: float  # when created, then when sent
    queues: set[str] | None
    future: asyncio.Future[Samples]
    sent: bool = False
    # The answer's samples by queue, made once for all readers (each keeps its own queues).
    by_queue: dict[str, Samples] | None = None

    def of(self, queues: frozenset[str]) -> Samples:
        if self.by_queue is None:
            self.by_queue = {}
            for sample in self.future.result():
                queue = sample.get("metric", {}).get(QUEUE_LABEL)
                self.by_queue.setdefault(queue, []).append(sample)
        return [s for q in queues for s in self.by_queue.get(q, ())]


class SharedQueries:
    """One PromQL query per series serves every pool reading the same Prometheus.

    With a query per pool and series, 1,000 pools polling every 5 s send 1,200 queries a
    second, each matching one queue. The default queries group ``by (queue_name)``, so one
    query over every queue in play answers them all. A pool's read joins the query of the
    same series started less than ``max_age`` seconds ago if it covers the pool's queues, or
    a query not sent yet (its queues are added; it waits ``gather`` seconds for readers of
    the same moment), and otherwise starts one over its queues and every queue asked for in
    the last ``in_play`` seconds, so that later readers are covered. Each reader keeps the
    samples of its own queues. ``max_age`` is SharedScrapes' half second: a shared answer
    is hardly older than a fresh one, so change-to-patch stays within the pool's interval
    plus the source's plus 1 s. A failure is shared like an answer, and not kept.

    Only the default queries are shared: an override may not group by queue (a plain
    ``sum``), and over other pools' queues it would add them in; overrides stay per pool.
    """

    def __init__(
        self, *, max_age: float = 0.5, in_play: float = 600.0, gather: float = 0.01
    ) -> None:
        self.max_age = max_age
        self.in_play = in_play
        self.gather = gather
        #: Queries sent, by Prometheus URL (for the benchmark and the tests).
        self.sent: dict[str, int] = {}
        self._asked: dict[tuple[str, float, str], dict[str, float]] = {}
        self._last: dict[tuple[str, float, str], _Batch] = {}

    async def query(
        self,
        url: str,
        template: str,
        queues: Sequence[str] | None,
        *,
        run: Callable[[str], Awaitable[Samples]],
        timeout: float = 0.0,
    ) -> Samples:
        """The samples of ``template`` (``$queues`` filled), covering ``queues``.

        ``queues`` None: the template names no queue (it is sent as it is). Readers with
        another ``timeout`` have queries of their own.
        """
        now = asyncio.get_running_loop().time()
        key = (url, timeout, template)
        wanted = frozenset(queues) if queues is not None else None
        if wanted is not None:
            asked = self._asked.setdefault(key, {})
            for queue in wanted:
                asked[queue] = now
        batch = self._last.get(key)
        if batch is not None and not batch.sent:
            # Not sent yet: however long this moment's readers take to arrive, it is fresh.
            if wanted is not None and batch.queues is not None:
                batch.queues |= wanted
        elif (
            batch is None
            or not 0 <= now - batch.at <= self.max_age
            or (
                batch.future.done()
                and not batch.future.cancelled()
                and batch.future.exception() is not None
            )
            or (wanted is not None and (batch.queues is None or not wanted <= batch.queues))
        ):
            covered: set[str] | None = None
            if wanted is not None:
                asked = self._asked[key]
                for queue in [q for q, at in asked.items() if now - at > self.in_play]:
                    del asked[queue]
                covered = set(asked)
            future: asyncio.Future[Samples] = asyncio.get_running_loop().create_future()
            batch = self._last[key] = _Batch(at=now, queues=covered, future=future)
            task = asyncio.ensure_future(self._send(url, template, batch, run))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
        samples = await asyncio.shield(batch.future)
        if wanted is None:
            return samples
        return batch.of(wanted)

    async def _send(
        self, url: str, template: str, batch: _Batch, run: Callable[[str], Awaitable[Samples]]
    ) -> None:
        await asyncio.sleep(self.gather)  # the other readers of this moment join
        batch.sent = True
        batch.at = asyncio.get_running_loop().time()  # its age counts from here
        promql = template
        if batch.queues is not None:
            promql = template.replace("$queues", queue_regex(sorted(batch.queues)))
        self.sent[url] = self.sent.get(url, 0) + 1
        try:
            samples = await run(promql)
        except BaseException as exc:
            if not batch.future.done():
                batch.future.set_exception(exc)
                batch.future.exception()  # retrieved: no warning if every reader left
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        if not batch.future.done():
            batch.future.set_result(samples)


class PrometheusSource:
    """Instant queries against ``<url>/api/v1/query``; one HTTP request per figure, or with
    ``shared`` one per figure for every pool reading this Prometheus (``SharedQueries``)."""

    def __init__(
        self,
        url: str,
        *,
        client: httpx.AsyncClient,
        timeout: float = 5.0,
        queries: PrometheusQueries | None = None,
        selector: str | None = None,
        shared: SharedQueries | None = None,
    ) -> None:
        self.base = url.rstrip("/")
        self.url = self.base + "/api/v1/query"
        self.client = client
        self.timeout = timeout
        self.shared = shared
        overrides = queries.model_dump(exclude_none=True) if queries is not None else {}
        defaults = default_queries(selector or "")
        self.queries: dict[str, str] = {**defaults, **overrides}
        self.completed_query = completed_query(selector or "")
        self.stale_query = stale_query(selector or "")
        self.newest_query = newest_query(selector or "")
        # The queries one answer of which serves every pool with the same selector (grouped
        # by queue, or naming none); an override may not group by queue, so it stays apart.
        self.shareable = frozenset(
            {q for name, q in defaults.items() if name not in overrides}
            | {self.completed_query, self.stale_query, self.newest_query}
        )
        # The default figures read Tide's exporters only (``TIDE_TARGETS``): with none of
        # their series live, every queue would read as empty. Overrides read what they read.
        self.needs_exporter = any(TIDE_TARGETS in q for q in self.queries.values())
        # Prometheus back from an outage answers from its old storage until it scrapes
        # again (instant queries look back five minutes): after an outage, the newest
        # exporter sample of the first answer is remembered, and figures are read again
        # only once a newer one shows that Prometheus has scraped since it came back.
        self._outage = False
        self._came_back_with: float | None = None

    async def _query(self, promql: str) -> list[dict[str, Any]]:
        try:
            if len(promql) > LONG_QUERY:
                response = await self.client.post(
                    self.url, data={"query": promql}, timeout=self.timeout
                )
            else:
                response = await self.client.get(
                    self.url, params={"query": promql}, timeout=self.timeout
                )
        except httpx.TimeoutException as exc:
            raise PrometheusUnreachable(f"Prometheus timed out after {self.timeout}s") from exc
        except httpx.HTTPError as exc:
            raise PrometheusUnreachable(f"Prometheus unreachable: {exc}") from exc
        if response.status_code >= 500:
            raise PrometheusUnreachable(
                f"Prometheus answered {response.status_code}: {response.text[:200]}"
            )
        try:
            payload = response.json()
        except ValueError as exc:
            raise MetricsUnavailable(
                f"Prometheus answered {response.status_code} without JSON"
            ) from exc
        if response.status_code != 200 or payload.get("status") != "success":
            raise MetricsUnavailable(
                f"Prometheus query failed ({response.status_code}): "
                f"{payload.get('errorType', '')} {payload.get('error', '')}".strip()
            )
        data = payload.get("data", {})
        if data.get("resultType") not in ("vector", "scalar"):
            raise MetricsUnavailable(f"PromQL must return a vector, got {data.get('resultType')}")
        if data.get("resultType") == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data.get("result", [])
        return result

    def _read(self, template: str, queues: Sequence[str]) -> Awaitable[Samples]:
        """One figure's samples: shared with the other pools for a default query."""
        if self.shared is not None and template in self.shareable:
            return self.shared.query(
                self.base,
                template,
                queues if "$queues" in template else None,
                run=self._query,
                timeout=self.timeout,
            )
        return self._query(template.replace("$queues", queue_regex(queues)))

    async def observe(self, queues: Sequence[str], *, now: float) -> Observation:
        try:
            return await self._observe(queues, now=now)
        except PrometheusUnreachable:
            self._outage, self._came_back_with = True, None
            raise

    def _check_exporter(self, samples: Samples) -> None:
        """Refuse figures that only look fresh: no live Tide exporter behind the default
        queries, or, after an outage of Prometheus, nothing scraped since it came back."""
        if not samples:
            if self.needs_exporter:
                raise MetricsUnavailable(
                    f"Prometheus holds no live series of a Tide exporter ({EXPORTER_UP}): "
                    "the exporter is down or not scraped, so every queue would read as empty"
                )
            return
        evaluated, newest = (float(v) for v in samples[0]["value"])
        if not self._outage:
            return
        if self._came_back_with is None or newest <= self._came_back_with:
            if self._came_back_with is None:
                self._came_back_with = newest
            raise MetricsUnavailable(
                "Prometheus is back from an outage and may answer from before it (its newest "
                f"exporter sample is {evaluated - newest:.0f}s old): waiting for its next scrape"
            )
        self._outage, self._came_back_with = False, None

    async def _observe(self, queues: Sequence[str], *, now: float) -> Observation:
        # The exporter's newest sample first: each query is evaluated when it arrives, so a
        # scrape landing between them could show a live exporter beside figures read just
        # before its first series existed (empty, read as 0). Read after it, they are at
        # least as new.
        self._check_exporter(await self._read(self.newest_query, queues))
        queries = {**self.queries, "completed": self.completed_query}
        names = list(queries)
        results = await asyncio.gather(
            *(self._read(queries[n], queues) for n in names),
            self._read(self.stale_query, queues),
        )
        stale = results[-1]
        if any(float(s["value"][1]) >= 1 for s in stale):
            raise MetricsUnavailable("the exporter reports stale figures (broker unreachable)")
        figures: dict[str, dict[str, float]] = {}
        for name, samples in zip(names, results[:-1], strict=True):
            for sample in samples:
                queue = sample.get("metric", {}).get(QUEUE_LABEL, "")
                figures.setdefault(queue, {})[name] = _finite(float(sample["value"][1]))
        # An empty result is 0 (see the module docstring): queues with no series simply
        # contribute nothing to the sums.
        per_queue = {
            q: QueueFigures(
                waiting=f.get("waiting", 0.0),
                inflight=f.get("inflight", 0.0),
                scheduled=f.get("scheduled", 0.0),
                oldest_age=f.get("oldest_age"),
                completed=f.get("completed"),
            )
            for q, f in figures.items()
        }
        return _total(per_queue, now=now)


# -------------------------------------------------------------------------------- exporter


def parse_queue_figures(text: str) -> tuple[dict[str, QueueFigures], bool]:
    """(queue -> figures, stale) from Prometheus text exposition (``tide_contract``'s parser)."""
    parsed = parse_queue_series(text)
    figures = {
        q: QueueFigures(
            waiting=_finite(v["waiting"]),
            inflight=_finite(v.get("inflight", 0.0)),
            scheduled=_finite(v.get("scheduled", 0.0)),
            oldest_age=None if "oldest_age" not in v else _finite(v["oldest_age"]),
            completed=None if "completed" not in v else _finite(v["completed"]),
        )
        for q, v in parsed.figures.items()
    }
    return figures, parsed.stale


Scrape = tuple[dict[str, QueueFigures], bool]


class SharedScrapes:
    """One scrape of an exporter's ``/metrics`` serves every pool that reads it soon after.

    Every pool of an installation scrapes the same exporter, which exports every queue, so
    N pools each fetching and parsing the whole exposition cost O(N^2): at 1,000 pools and
    a 5 s interval that is 200 parses a second of 2,000 samples (~24 ms each), more than
    two cores (the operator benchmark fell to a third of the ticks asked for at 300 pools).
    A scrape started less than ``max_age`` seconds ago is shared instead, including one
    still in flight, and so is its failure. Age is measured on the event loop's clock when
    the read is made, not with the caller's ``now``: a pool's ``now`` is when its tick
    began, and under load that is seconds before it reaches the read. ``max_age`` is
    small beside the exporter's own broker-read interval (2 s by default), so a shared
    scrape is hardly older than a fresh one would be, and change-to-patch stays within one
    polling interval plus 1 s.
    """

    def __init__(self, *, max_age: float = 0.5) -> None:
        self.max_age = max_age
        self._last: dict[str, tuple[float, asyncio.Future[Scrape]]] = {}

    async def get(self, url: str, *, scrape: Callable[[], Awaitable[Scrape]]) -> Scrape:
        now = asyncio.get_running_loop().time()
        found = self._last.get(url)
        if found is None or not 0 <= now - found[0] <= self.max_age:
            future = asyncio.ensure_future(scrape())
            # Retrieve a failure even if every reader was cancelled meanwhile (no warning).
            future.add_done_callback(lambda f: f.cancelled() or f.exception())
            found = self._last[url] = (now, future)
        # Shielded: one pool's loop being cancelled must not cancel the others' scrape.
        return await asyncio.shield(found[1])


class ExporterSource:
    """GET the exporter's ``/metrics`` and sum the pool's queues.

    With ``shared``, pools reading the same URL within its ``max_age`` share one scrape.
    """

    def __init__(
        self,
        url: str,
        *,
        client: httpx.AsyncClient,
        timeout: float = 5.0,
        shared: SharedScrapes | None = None,
    ) -> None:
        if not url.rstrip("/").endswith("/metrics"):
            url = url.rstrip("/") + "/metrics"
        self.url = url
        self.client = client
        self.timeout = timeout
        self.shared = shared

    async def _scrape(self) -> Scrape:
        try:
            response = await self.client.get(self.url, timeout=self.timeout)
            response.raise_for_status()
        except httpx.TimeoutException as exc:
            raise MetricsUnavailable(f"exporter timed out after {self.timeout}s") from exc
        except httpx.HTTPStatusError as exc:
            answer = exc.response
            raise MetricsUnavailable(
                f"exporter at {self.url} answered {answer.status_code} {answer.reason_phrase}"
            ) from exc
        except httpx.HTTPError as exc:
            raise MetricsUnavailable(f"exporter at {self.url} unreachable: {exc}") from exc
        try:
            return parse_queue_figures(response.text)
        except ValueError as exc:
            raise MetricsUnavailable(f"exporter answered unparsable metrics: {exc}") from exc

    async def observe(self, queues: Sequence[str], *, now: float) -> Observation:
        if self.shared is None:
            figures, stale = await self._scrape()
        else:
            figures, stale = await self.shared.get(self.url, scrape=self._scrape)
        if stale:
            raise MetricsUnavailable("the exporter reports stale figures (broker unreachable)")
        missing = [q for q in queues if q not in figures]
        if missing:
            raise MetricsUnavailable(
                f"the exporter does not export queue(s) {', '.join(missing)}; "
                "add them to its configuration"
            )
        return _total({q: figures[q] for q in queues}, now=now)


def source_for(
    metrics: MetricsSpec,
    *,
    client: httpx.AsyncClient,
    shared: SharedScrapes | None = None,
    queries: SharedQueries | None = None,
) -> MetricSource:
    """The source a pool's ``spec.metrics`` asks for (exporter scrapes shared via ``shared``,
    Prometheus queries via ``queries``)."""
    if metrics.prometheus is not None:
        p = metrics.prometheus
        return PrometheusSource(
            p.url,
            client=client,
            timeout=p.timeout_seconds,
            queries=p.queries,
            selector=p.selector,
            shared=queries,
        )
    assert metrics.exporter is not None  # validated: exactly one
    e = metrics.exporter
    return ExporterSource(e.url, client=client, timeout=e.timeout_seconds, shared=shared)
