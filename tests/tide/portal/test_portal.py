"""The API introduces itself: the start page, the API root, Swagger UI and Redoc served
with their own assets, the schema readable in a browser, and the admin behind its login
where it is routed. Django's test client against the suite's real PostgreSQL."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.test import Client
from django.urls import clear_url_caches
from rest_framework.test import APIClient

from tide.jobs.accounts import ensure_token

pytestmark = pytest.mark.django_db

MANAGE = Path(__file__).resolve().parents[3] / "app" / "manage.py"
BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


def links(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"#]+)"', html)


@pytest.fixture
def api() -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {ensure_token('newcomer')}")
    return client


def test_start_page_links_the_api_its_docs_and_probes(api: APIClient) -> None:
    response = Client().get("/", HTTP_ACCEPT=BROWSER)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    html = response.content.decode()
    hrefs = links(html)
    for path in ("/api/docs/", "/api/redoc/", "/api/schema/", "/api/jobs/", "/api/tasks/"):
        assert path in hrefs, path
    # Every link on the page answers (with a token, as the page tells the reader).
    for href in hrefs:
        assert href.startswith("/"), f"the start page links outside the API: {href}"
        status = api.get(href).status_code
        assert status in (200, 405), f"{href} answered {status}"


def test_api_root_lists_every_endpoint_publicly(api: APIClient) -> None:
    response = Client().get("/api/")
    assert response.status_code == 200
    body = response.json()
    assert {"jobs", "workflows", "tasks", "queues", "schema", "docs", "redoc"} <= set(
        body["endpoints"]
    )
    for entry in body["details"]:
        # Each listed path exists: GET answers, or says which methods it takes instead.
        assert api.get(entry["path"]).status_code in (200, 405), entry
        assert entry["url"].endswith(entry["path"])


@pytest.mark.parametrize("page", ["/api/docs/", "/api/redoc/"])
def test_docs_pages_serve_their_own_assets(page: str) -> None:
    client = Client()
    response = client.get(page, HTTP_ACCEPT=BROWSER)
    assert response.status_code == 200
    html = response.content.decode()
    assets = [u for u in links(html) if not u.startswith("/api/schema")]
    assert any(u.endswith(".js") for u in assets), assets
    for url in assets:
        # No CDN: every script, stylesheet and icon comes from this process...
        assert url.startswith("/static/"), f"{page} loads {url} from elsewhere"
        # ...and is really there (WhiteNoise serves it from drf-spectacular-sidecar).
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert b"".join(asset.streaming_content if asset.streaming else [asset.content])
    assert "/api/schema/" in html


def test_schema_reads_in_a_browser_and_downloads_for_tools() -> None:
    client = Client()
    browser = client.get("/api/schema/", HTTP_ACCEPT=BROWSER)
    assert browser.status_code == 200
    assert browser["Content-Type"].startswith("text/plain")
    document = yaml.safe_load(browser.content)
    assert document["openapi"].startswith("3.")
    assert "/api/jobs/" in document["paths"]
    # Swagger UI's Authorize button: the token scheme is described.
    assert "tokenAuth" in document["components"]["securitySchemes"]
    tool = client.get("/api/schema/")
    assert tool["Content-Type"].startswith("application/vnd.oai.openapi")
    assert client.get("/api/schema/?format=json").json()["paths"] == document["paths"]


@pytest.fixture
def admin_routed(settings: Any) -> Iterator[None]:
    """The URL map as local mode builds it (``TIDE_ADMIN_ENABLED``), restored after."""
    import tide.urls

    settings.TIDE_ADMIN_ENABLED = True
    importlib.reload(tide.urls)
    clear_url_caches()
    yield
    settings.TIDE_ADMIN_ENABLED = False
    importlib.reload(tide.urls)
    clear_url_caches()


def test_admin_is_not_routed_unless_enabled() -> None:
    assert Client().get("/admin/").status_code == 404


def test_local_settings_route_the_admin() -> None:
    # In a process of its own: importing the local settings here would change this one's.
    code = "from django.urls import reverse; print(reverse('admin:index'))"
    for module, routed in (("tide.settings.local", True), ("tide.settings.production", False)):
        result = subprocess.run(
            [sys.executable, str(MANAGE), "shell", "-c", code],
            env={
                **os.environ,
                "DJANGO_SETTINGS_MODULE": module,
                "DJANGO_SECRET_KEY": "k" * 50,
                "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/postgres",
            },
            capture_output=True,
            text=True,
            check=False,
        )
        assert ("/admin/" in result.stdout.split()) is routed, (module, result.stderr[-500:])


def test_admin_is_behind_its_login(admin_routed: None, tmp_path: Any) -> None:
    from tide.jobs.accounts import ensure_admin_login
    from tide.jobs.models import Job

    client = Client()
    anonymous = client.get("/admin/jobs/job/")
    assert anonymous.status_code == 302
    assert anonymous["Location"].startswith("/admin/login/")
    # A plain API user is not staff: the admin refuses them.
    ensure_token("plain")
    assert not client.login(username="plain", password="")

    password = ensure_admin_login("localdev", tmp_path / "admin-password")
    assert (tmp_path / "admin-password").stat().st_mode & 0o777 == 0o600
    # Asked again (a second `tide up`), the same password still works.
    assert ensure_admin_login("localdev", tmp_path / "admin-password") == password
    assert client.login(username="localdev", password=password)
    job = Job.objects.create(task_name="tide.samples.add", args=[1, 2])
    page = client.get("/admin/jobs/job/")
    assert page.status_code == 200
    assert str(job.id) in page.content.decode()
    # The admin's own stylesheet is served too.
    css = re.search(r'href="(/static/admin/css/[^"]+)"', page.content.decode())
    assert css
    assert client.get(css.group(1)).status_code == 200
