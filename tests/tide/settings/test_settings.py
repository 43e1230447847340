"""Settings come from the environment, debug is off by default, and production settings
pass Django's deployment checklist with no warnings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

MANAGE = Path(__file__).resolve().parents[3] / "app" / "manage.py"


def run_manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_"))}
    return subprocess.run(
        [sys.executable, str(MANAGE), *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=False,
    )


def test_production_passes_check_deploy() -> None:
    result = run_manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        DJANGO_SETTINGS_MODULE="tide.settings.production",
        DJANGO_SECRET_KEY="x" * 30 + "a-long-random-production-key-0123456789",
        DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_refuses_to_start_without_a_secret_key() -> None:
    result = run_manage("check", DJANGO_SETTINGS_MODULE="tide.settings.production")
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY" in result.stderr


def test_debug_is_off_unless_asked_for() -> None:
    code = "from django.conf import settings; print(settings.DEBUG)"
    off = run_manage("shell", "-c", code, DJANGO_SETTINGS_MODULE="tide.settings.local")
    on = run_manage(
        "shell", "-c", code, DJANGO_SETTINGS_MODULE="tide.settings.local", DJANGO_DEBUG="true"
    )
    assert (off.stdout.split()[-1], on.stdout.split()[-1]) == ("False", "True")


def test_a_bad_boolean_is_an_error_naming_the_variable() -> None:
    result = run_manage("check", DJANGO_SETTINGS_MODULE="tide.settings.local", DJANGO_DEBUG="maybe")
    assert result.returncode != 0
    assert "DJANGO_DEBUG='maybe' is not a boolean" in result.stderr


def test_local_mode_falls_back_to_sqlite_without_a_database_url() -> None:
    code = "from django.conf import settings; print(settings.DATABASES['default']['ENGINE'])"
    result = run_manage("shell", "-c", code, DJANGO_SETTINGS_MODULE="tide.settings.local")
    assert result.stdout.split()[-1] == "django.db.backends.sqlite3"
