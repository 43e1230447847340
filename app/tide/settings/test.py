"""Settings for the test suite: the real PostgreSQL and Redis of the machine.

The test database name carries ``TIDE_TEST_RUN`` (default: the pid) so two suites on one
machine do not drop each other's database, and the Celery queues carry a unique key
prefix for the same reason; worker processes started by the tests inherit both.
"""

from __future__ import annotations

import os

from tide.settings.base import *  # noqa: F403
from tide.settings.base import CELERY_BROKER_TRANSPORT_OPTIONS, DATABASES
from tide.settings.env import env_bool, env_list

SECRET_KEY = "tide-test-key"
TEST_RUN = os.environ.setdefault("TIDE_TEST_RUN", str(os.getpid()))
DATABASES["default"]["TEST"] = {"NAME": f"test_tide_{TEST_RUN}"}


def broker_key_prefix(run: str) -> str:
    """The Redis key prefix of a test run's broker keyspace."""
    return f"tide-test-{run}:"


CELERY_BROKER_TRANSPORT_OPTIONS.setdefault("global_keyprefix", broker_key_prefix(TEST_RUN))
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# The sample tasks are submittable here, and they may call services on this machine.
TIDE_SAMPLE_TASKS = env_bool("TIDE_SAMPLE_TASKS", default=True)
TIDE_OUTBOUND_HOSTS = env_list("TIDE_OUTBOUND_HOSTS", default="127.0.0.1,localhost,[::1]")
