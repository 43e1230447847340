"""Sample tasks called in-process: the circuit breaker around the shipping service."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pybreaker
import pytest

from tide.jobs.outbound import OutboundRefused, host_allowed
from tide.local.environment import free_port
from tide.samples.tasks import notify_shipping, shipping_breaker

RECEIVED: list[str] = []


@pytest.fixture
def shipping() -> Iterator[str]:
    """A real HTTP service on loopback that accepts orders (and records their paths)."""
    RECEIVED.clear()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            RECEIVED.append(self.path)
            self.send_response(202)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/orders"
    server.shutdown()


@pytest.fixture(autouse=True)
def _closed_breaker() -> Iterator[None]:
    shipping_breaker.close()
    yield
    shipping_breaker.close()


def test_notify_shipping_posts_the_order(shipping: str) -> None:
    assert notify_shipping.run("order-1", shipping) == 202


def test_breaker_opens_after_repeated_failures_and_fails_fast() -> None:
    down = f"http://127.0.0.1:{free_port()}/orders"  # nothing listens there
    for _ in range(shipping_breaker.fail_max - 1):
        with pytest.raises(httpx.ConnectError):
            notify_shipping.run("order-2", down, timeout=1)
    # The failure that reaches fail_max opens the breaker...
    with pytest.raises(pybreaker.CircuitBreakerError):
        notify_shipping.run("order-2", down, timeout=1)
    assert shipping_breaker.current_state == "open"
    # ...after which calls fail at once, without touching the service.
    with pytest.raises(pybreaker.CircuitBreakerError):
        notify_shipping.run("order-3", down, timeout=1)


@pytest.mark.parametrize(
    ("allowed", "url"),
    [
        # The test settings allow loopback; a deployment's list without it refuses it.
        (["shipping.example.com"], "http://127.0.0.1:{port}/orders"),
        # Cloud metadata, another scheme, no host.
        (["127.0.0.1"], "http://169.254.169.254/latest/meta-data/"),
        (["127.0.0.1"], "file:///etc/passwd"),
        (["*.example.com"], "http://example.com.evil.net/x"),
        ([], "http://127.0.0.1:{port}/orders"),
    ],
)
def test_notify_shipping_calls_only_allowed_hosts(
    shipping: str, settings: Any, allowed: list[str], url: str
) -> None:
    settings.TIDE_OUTBOUND_HOSTS = allowed
    port = shipping.split(":")[2].split("/")[0]
    with pytest.raises(OutboundRefused, match="Refused to call"):
        notify_shipping.run("order-4", url.format(port=port))
    assert RECEIVED == []
    # Refused is final: not an error the task retries.
    assert not issubclass(OutboundRefused, notify_shipping.autoretry_for)


@pytest.mark.parametrize(
    ("host", "allowed", "ok"),
    [
        ("api.example.com", ["*.example.com"], True),
        ("example.com", ["*.example.com"], False),
        ("API.Example.com.", ["api.example.com"], True),
        ("::1", ["[::1]"], True),
        ("10.0.0.1", ["127.0.0.1"], False),
    ],
)
def test_host_allow_list(host: str, allowed: list[str], ok: bool) -> None:
    assert host_allowed(host, allowed) is ok
