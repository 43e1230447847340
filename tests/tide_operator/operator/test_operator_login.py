"""Logging in with any kubeconfig: one test per shape people's clusters hand out.

Each test writes credentials the way a cluster's tooling does (kind/kubeadm embed base64
``*-data``; hand-made configs name files relative to themselves; CI uses a token; EKS and
GKE run an exec plugin; a pod has its service account), starts the operator with
``tide operator``'s own login (``adapters.credentials.login``), and checks against a server
that refuses what a real one refuses (``ApiGateway``: TLS with a CA made here, client
certificate or bearer token, 401 otherwise) that:

* the operator reconciles a pool through that login, kopf's watches and Tide's own calls
  both authenticated as the expected identity;
* no file holding the client key is left on any filesystem once the operator stopped.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import functools
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml
from api_gateway import ApiGateway, Pki
from kube_emulator import OPERATOR_TOKEN, TideEmulator
from pool_harness import (
    NS,
    FakeBusyProbe,
    FakeExporter,
    condition,
    eventually,
    pool_body,
    replicas,
    running_operator,
)

from tide_operator.adapters.credentials import Credentials, LoginFailed, login
from tide_operator.adapters.kube import KubeApi
from tide_operator.edge.handlers import LoginFn, Runtime

pytestmark = [pytest.mark.asyncio, pytest.mark.looptime, pytest.mark.timeout(60)]

POOLS = f"/apis/tide.dev/v1alpha1/namespaces/{NS}/workerpools"
USER = "tide-operator"


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki(user=USER)


@pytest_asyncio.fixture()
async def gateway(emulator: TideEmulator, pki: Pki, tmp_path: Path) -> AsyncIterator[ApiGateway]:
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    async with ApiGateway(
        str(emulator.url),
        ssl_context=pki.server_context(server_dir),
        users={USER},
        upstream_authorization=f"Bearer {OPERATOR_TOKEN}",
    ) as front:
        yield front


@pytest.fixture
def start(
    emulator: TideEmulator, probe: FakeBusyProbe, request: pytest.FixtureRequest
) -> Callable[[LoginFn], AbstractAsyncContextManager[Runtime]]:
    """Start ``tide operator`` (namespace scope, as the chart runs it) with a given login."""
    return lambda login_fn: running_operator(
        emulator, probe, scope="namespace", nodeid=request.node.nodeid, login=login_fn
    )


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def write_kubeconfig(
    path: Path, server: str, *, cluster: dict[str, Any], user: dict[str, Any]
) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "test", "cluster": {"server": server, **cluster}}],
                "users": [{"name": "operator", "user": user}],
                "contexts": [{"name": "test", "context": {"cluster": "test", "user": "operator"}}],
                "current-context": "test",
            }
        )
    )
    return str(path)


def leftover_keys(key_pem: bytes, *, since: float) -> list[str]:
    """Files made since ``since`` in the temporary places a login could write, holding the key.

    Looks at the top of the temp directory and ``/dev/shm`` (where ``tempfile``, the
    kubernetes package and kopf put files) and inside every ``tide-kube-*`` directory (the
    login's private ones, which must be gone); other people's directories are not read.
    """
    found = []
    for root in {Path(tempfile.gettempdir()), Path("/dev/shm")}:
        if not root.is_dir():
            continue
        for entry in root.iterdir():
            try:
                if entry.lstat().st_mtime < since - 1:
                    continue
                if entry.name.startswith("tide-kube-"):
                    found.append(f"{entry} (the login's private directory)")
                    continue
                small_file = (
                    entry.is_file() and not entry.is_symlink() and entry.stat().st_size < 1 << 20
                )
                if small_file and key_pem.strip() in entry.read_bytes():
                    found.append(str(entry))
            except OSError:
                continue  # gone meanwhile, or not ours to read
    return found


async def reconcile_through(
    login_fn: LoginFn,
    *,
    start: Callable[[LoginFn], AbstractAsyncContextManager[Runtime]],
    emulator: TideEmulator,
    exporter: FakeExporter,
    api: KubeApi,
    name: str,
) -> Runtime:
    """Run the operator with ``login_fn`` until a new pool is scaled and Ready, then stop it."""
    async with start(login_fn) as runtime:
        exporter.set("default", waiting=2)
        await api.create(POOLS, pool_body(name, exporter_url=exporter.url))
        await eventually(lambda: replicas(emulator, f"{name}-workers") == 2, what="scaled to 2")
        await eventually(
            lambda: (c := condition(emulator, name, "Ready")) and c["status"] == "True",
            what="Ready=True",
        )
    return runtime


def assert_used_by_both_clients(gateway: ApiGateway, identity: str) -> None:
    mine = [(method, path) for who, method, path in gateway.requests if who == identity]
    # kopf's watches and Tide's own calls (creating the Deployment, writing status).
    assert any("watch=" in path for _, path in mine), mine[:5]
    mine = [(method, path.partition("?")[0]) for method, path in mine]
    assert any(m == "POST" and path.endswith("/deployments") for m, path in mine), mine[:5]
    assert any(m == "PATCH" and path.endswith("/status") for m, path in mine), mine[:5]


async def test_kubeconfig_with_embedded_data_and_client_certificate(
    gateway: ApiGateway,
    pki: Pki,
    start: Callable[[LoginFn], AbstractAsyncContextManager[Runtime]],
    emulator: TideEmulator,
    exporter: FakeExporter,
    api: KubeApi,
    tmp_path: Path,
) -> None:
    # What kind, kubeadm and k3s write: base64 *-data, not PEM and not paths.
    since = time.time()
    config = write_kubeconfig(
        tmp_path / "kubeconfig",
        gateway.url,
        cluster={"certificate-authority-data": b64(pki.ca_pem)},
        user={
            "client-certificate-data": b64(pki.client.cert_pem),
            "client-key-data": b64(pki.client.key_pem),
        },
    )
    await reconcile_through(
        functools.partial(login, kubeconfig=config, environ={}),
        start=start,
        emulator=emulator,
        exporter=exporter,
        api=api,
        name="embedded",
    )
    assert_used_by_both_clients(gateway, f"cert:{USER}")
    assert gateway.unauthorized == 0
    assert leftover_keys(pki.client.key_pem, since=since) == []


async def test_kubeconfig_with_paths_relative_to_itself(
    gateway: ApiGateway,
    pki: Pki,
    start: Callable[[LoginFn], AbstractAsyncContextManager[Runtime]],
    emulator: TideEmulator,
    exporter: FakeExporter,
    api: KubeApi,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Files named relative to the kubeconfig, read from another working directory.
    pki_dir = tmp_path / "home" / ".kube" / "pki"
    pki_dir.mkdir(parents=True)
    (pki_dir / "ca.crt").write_bytes(pki.ca_pem)
    (pki_dir / "operator.crt").write_bytes(pki.client.cert_pem)
    (pki_dir / "operator.key").write_bytes(pki.client.key_pem)
    config = write_kubeconfig(
        tmp_path / "home" / ".kube" / "config",
        gateway.url,
        cluster={"certificate-authority": "pki/ca.crt"},
        user={"client-certificate": "pki/operator.crt", "client-key": "pki/operator.key"},
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    since = time.time()
    await reconcile_through(
        functools.partial(login, kubeconfig=config, environ={}),
        start=start,
        emulator=emulator,
        exporter=exporter,
        api=api,
        name="relative",
    )
    assert_used_by_both_clients(gateway, f"cert:{USER}")
    # The user's own key file stays where it was; no copy of it appeared anywhere.
    assert leftover_keys(pki.client.key_pem, since=since) == []


async def test_kubeconfig_with_a_bearer_token(
    gateway: ApiGateway,
    pki: Pki,
    start: Callable[[LoginFn], AbstractAsyncContextManager[Runtime]],
    emulator: TideEmulator,
    exporter: FakeExporter,
    api: KubeApi,
    tmp_path: Path,
) -> None:
    # A CI service account's kubeconfig: CA data and a token, no client certificate.
    gateway.tokens.add("ci-token")
    config = write_kubeconfig(
        tmp_path / "kubeconfig",
        gateway.url,
        cluster={"certificate-authority-data": b64(pki.ca_pem)},
        user={"token": "ci-token"},
    )
    await reconcile_through(
        functools.partial(login, kubeconfig=config, environ={}),
        start=start,
        emulator=emulator,
        exporter=exporter,
        api=api,
        name="token",
    )
    assert_used_by_both_clients(gateway, "token:ci-token")
    assert gateway.unauthorized == 0


EXEC_PLUGIN = """
import datetime, json, pathlib, sys

# A stand-in for `aws eks get-token`: a new token on every run, valid for one minute.
counter = pathlib.Path(sys.argv[1])
issued = int(counter.read_text()) + 1 if counter.exists() else 1
counter.write_text(str(issued))
expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=1)
print(json.dumps({
    "apiVersion": "client.authentication.k8s.io/v1",
    "kind": "ExecCredential",
    "status": {"token": f"exec-token-{issued}",
               "expirationTimestamp": expires.strftime("%Y-%m-%dT%H:%M:%SZ")},
}))
"""


async def test_kubeconfig_with_an_exec_plugin_refreshes_the_token(
    gateway: ApiGateway,
    pki: Pki,
    start: Callable[[LoginFn], AbstractAsyncContextManager[Runtime]],
    emulator: TideEmulator,
    exporter: FakeExporter,
    api: KubeApi,
    tmp_path: Path,
) -> None:
    # EKS/GKE style: the user section runs a command that prints an ExecCredential.
    plugin = tmp_path / "get-token.py"
    plugin.write_text(EXEC_PLUGIN)
    counter = tmp_path / "issued"
    gateway.tokens.update(f"exec-token-{n}" for n in range(1, 1000))
    config = write_kubeconfig(
        tmp_path / "kubeconfig",
        gateway.url,
        cluster={"certificate-authority-data": b64(pki.ca_pem)},
        user={
            "exec": {
                "apiVersion": "client.authentication.k8s.io/v1",
                "command": sys.executable,
                "args": [str(plugin), str(counter)],
                "interactiveMode": "Never",
            }
        },
    )
    async with start(functools.partial(login, kubeconfig=config, environ={})):
        exporter.set("default", waiting=2)
        await api.create(POOLS, pool_body("exec", exporter_url=exporter.url))
        await eventually(lambda: replicas(emulator, "exec-workers") == 2)
        used = {who for who in gateway.identities if who.startswith("token:exec-token-")}
        assert used
        # Those tokens expire and the API server stops taking them: the operator must run
        # the plugin again rather than fail.
        gateway.tokens -= {who.removeprefix("token:") for who in used}
        exporter.set("default", waiting=4)
        await eventually(lambda: replicas(emulator, "exec-workers") == 4, timeout=60)
    later = {who for who in gateway.identities if who.startswith("token:exec-token-")} - used
    assert later, gateway.identities
    assert int(counter.read_text()) > len(used)


class _TwoMinutesLater:
    """Stands in for the ``datetime`` module inside kubernetes' in-cluster loader.

    The loader re-reads the token file when a minute has passed since it last did; this
    clock makes that minute pass without waiting for it.
    """

    timedelta = datetime.timedelta

    class datetime(datetime.datetime):
        @classmethod
        def now(cls, tz: datetime.tzinfo | None = None) -> Any:
            return datetime.datetime.now(tz) + datetime.timedelta(minutes=2)


async def test_in_cluster_service_account_with_token_rotation(
    gateway: ApiGateway,
    pki: Pki,
    start: Callable[[LoginFn], AbstractAsyncContextManager[Runtime]],
    emulator: TideEmulator,
    exporter: FakeExporter,
    api: KubeApi,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What a pod has: KUBERNETES_SERVICE_HOST/PORT and a projected token + CA; no kubeconfig.
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text("sa-token-1")
    (account / "ca.crt").write_bytes(pki.ca_pem)
    gateway.tokens.add("sa-token-1")
    environ = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(gateway.port)}
    async with start(
        functools.partial(login, service_account_dir=str(account), environ=environ)
    ) as runtime:
        exporter.set("default", waiting=2)
        await api.create(POOLS, pool_body("incluster", exporter_url=exporter.url))
        await eventually(lambda: replicas(emulator, "incluster-workers") == 2)
        credentials = await runtime.credentials()
        assert credentials.source == "in-cluster service account"
        # The kubelet rotates the projected token; the old one stops being accepted.
        (account / "token").write_text("sa-token-2")
        gateway.tokens = {"sa-token-2"}
        from kubernetes.config import incluster_config

        monkeypatch.setattr(incluster_config, "datetime", _TwoMinutesLater)
        exporter.set("default", waiting=3)
        # Well inside the loader's real minute: only the re-read of the file can pass this.
        await eventually(lambda: replicas(emulator, "incluster-workers") == 3, timeout=20)
    assert gateway.identities["token:sa-token-1"] > 0
    assert gateway.identities["token:sa-token-2"] > 0


def test_no_credentials_is_a_clear_error(tmp_path: Path) -> None:
    # Neither a pod nor a kubeconfig: the error names each place looked at.
    with pytest.raises(LoginFailed) as failed:
        login(kubeconfig=str(tmp_path / "missing"), environ={})
    assert str(tmp_path / "missing") in str(failed.value)


def test_the_header_is_never_in_the_repr() -> None:
    credentials = Credentials("https://127.0.0.1:6443", authorization="Bearer secret")
    assert "secret" not in repr(credentials)
    # The header itself is what requests carry.
    assert credentials.current_authorization() == "Bearer secret"


def test_a_token_refresh_never_waits_behind_blocking_work() -> None:
    # The loader's hook runs on a thread of its own. At 100 pools on a real API server the
    # workers' probes (blocking `celery inspect` calls, 2 s each when nobody answers) filled
    # the loop's default executor, and a refresh queued behind them held every request,
    # the Lease's renewals too: the acting replica lost the Lease while it was alive.
    threads: list[str] = []

    def hook() -> str:
        threads.append(threading.current_thread().name)
        return "Bearer fresh"

    credentials = Credentials("https://127.0.0.1:6443", authorization="Bearer old", refresh=hook)
    release = threading.Event()

    async def refresh_while_busy() -> str | None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(max_workers=2))
        probes = [loop.run_in_executor(None, release.wait, 30) for _ in range(4)]
        try:
            return await asyncio.wait_for(credentials.authorization(), timeout=2)
        finally:
            release.set()
            await asyncio.gather(*probes)

    assert asyncio.run(refresh_while_busy()) == "Bearer fresh"
    assert threads
    assert all(name.startswith("tide-credentials") for name in threads)
