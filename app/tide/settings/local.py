"""Settings for a developer's machine and for ``tide up``.

Debug stays off unless ``DJANGO_DEBUG`` says otherwise (the API is JSON; Django's debug
pages add nothing and leak settings). Without ``DATABASE_URL`` it falls back to SQLite
under ``var/`` so the platform runs where no PostgreSQL is reachable.
"""

from __future__ import annotations

import os

from tide.settings.base import *  # noqa: F403
from tide.settings.base import BASE_DIR, DATABASES
from tide.settings.env import env_bool, env_list

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or "tide-local-insecure-key-do-not-deploy"

# The admin is routed on a developer's machine (still behind its login).
TIDE_ADMIN_ENABLED = env_bool("TIDE_ADMIN_ENABLED", default=True)

if not os.environ.get("DATABASE_URL"):
    _var = BASE_DIR.parent.parent / "var"
    _var.mkdir(exist_ok=True)
    DATABASES["default"] = {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(_var / "tide.sqlite3"),
        # SQLite serialises writers; a wait beats "database is locked" under a burst.
        "OPTIONS": {"timeout": 20},
    }

# The sample tasks are submittable here, and they may call services on this machine.
TIDE_SAMPLE_TASKS = env_bool("TIDE_SAMPLE_TASKS", default=True)
TIDE_OUTBOUND_HOSTS = env_list("TIDE_OUTBOUND_HOSTS", default="127.0.0.1,localhost,[::1]")
