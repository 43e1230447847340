"""Sample tasks called in-process: the circuit breaker around the shipping service."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import httpx
import pybreaker
import pytest

from tide.local.environment import free_port
from tide.samples.tasks import notify_shipping, shipping_breaker


@pytest.fixture
def shipping() -> Iterator[str]:
    """A real HTTP service on loopback that accepts orders."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
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
