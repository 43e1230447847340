"""``tide load`` reports trouble as a client would see it: no traceback, every job counted.

Against a real API server where one runs (the ``live_server`` of pytest-django), and a
loopback port where nothing listens for an API that is away.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tide.jobs.accounts import ensure_token
from tide.local.environment import free_port
from tide.local.load import Client, plan_burst, run

BIN = Path(sys.executable).parent


def test_an_api_that_is_away_is_an_error_not_a_traceback() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = subprocess.run(
        [str(BIN / "tide"), "load", "--burst", "3", "--url", url, "--token", "t"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    assert "refused: 3" in result.stdout
    assert "error: ConnectError: 3" in result.stderr
    assert f"the API at {url} took no job" in result.stderr


@pytest.mark.django_db(transaction=True)
def test_jobs_unfinished_at_the_timeout_are_counted(live_server: Any) -> None:
    # Jobs of 5 s against a 1 s timeout: unfinished whether or not a worker of another
    # test in the session consumes the queue (with 0.1 s jobs one did, and finished them).
    import random

    client = Client(live_server.url, ensure_token("loader"))
    plan = plan_burst(4, [5.0], random.Random(0))
    report = run(client=client, plan=plan, task="tide.samples.io_bound", wait=True,
                 timeout=1.0, echo=False)  # fmt: skip
    assert (report["submitted"], report["refused"]) == (4, 0)
    assert (report["completed"], report["failed"], report["unfinished"]) == (0, 0, 4)
