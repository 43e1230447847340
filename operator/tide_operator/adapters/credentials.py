"""Who the operator is to the Kubernetes API: credentials resolved by the ``kubernetes`` package.

Every way people reach a cluster is read by the official client's own config loaders
(``kubernetes.config``), not by a parser of Tide's: the pod's service account (its token
re-read when the kubelet rotates it), and any kubeconfig — embedded base64 ``*-data``
(kind, kubeadm, k3s, EKS, GKE, AKS), certificate and token files named relative to the
kubeconfig, a bearer token, basic auth, an exec plugin (``aws eks get-token``,
``gke-gcloud-auth-plugin``, ``kubelogin``) whose token is fetched again when it expires.
kopf logs in through the same package when it is installed; Tide calls it directly so
that the operator's HTTP client and kopf's share one identity (``edge/handlers.py`` hands
the same TLS context and header to both).

What this module adds is where the secrets live:

* the CA bundle is read into memory and trusted from there (``cadata``);
* a client key cannot reach an ``ssl.SSLContext`` from memory (Python's ``ssl`` has only
  ``load_cert_chain(certfile, keyfile)``), so the loader writes embedded data into a
  private directory (mode 0700, on ``/dev/shm`` when there is one, so it never touches a
  disk), the context loads it, and the directory is removed before ``login`` returns: no
  key file outlives the login, even if the process is later killed;
* the ``Authorization`` header comes from the loader's refresh hook, asked at most every
  ``TOKEN_CHECK_SECONDS`` (the hook re-reads the service-account token a minute after it
  last did, and re-runs an exec plugin five minutes before its token expires) and at once
  after a 401. The hook may run a subprocess, so it runs in a thread: a thread of its own,
  not the event loop's default executor, which the pools' worker probes (``celery
  inspect``, 2 s each when nobody answers) fill at 100 pools. A refresh queued behind them
  held every API request for seconds (on a real API server, the acting replica's Lease
  renewals missed their deadline and the replicas handed the Lease back and forth).

Which credentials: an explicit kubeconfig (``--kubeconfig`` or ``$KUBECONFIG``) first, then
the in-cluster service account when ``$KUBERNETES_SERVICE_HOST`` is set, then
``~/.kube/config`` — the order kubectl and client-go follow.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import ssl
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

__all__ = [
    "SERVICE_ACCOUNT_DIR",
    "Credentials",
    "LoginFailed",
    "login",
]

SERVICE_ACCOUNT_DIR: Final = "/var/run/secrets/kubernetes.io/serviceaccount"
DEFAULT_KUBECONFIG: Final = "~/.kube/config"
# How stale a cached Authorization header may be before the loader's hook is asked again.
TOKEN_CHECK_SECONDS: Final = 10.0
# The refresh hook's own thread (created at the first refresh), apart from the default
# executor that blocking work elsewhere in the operator may keep busy.
_REFRESHER: Final = concurrent.futures.ThreadPoolExecutor(
    max_workers=1, thread_name_prefix="tide-credentials"
)


class LoginFailed(Exception):
    """No usable credentials; the message says what was tried and why each failed."""


class Credentials:
    """A server, the TLS context to reach it with, and the current Authorization header.

    Built by ``login`` from the environment; tests and benchmarks build one directly
    (``Credentials("http://127.0.0.1:8080", authorization="Bearer t")``).
    """

    def __init__(
        self,
        server: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        authorization: str | None = None,
        refresh: Callable[[], str | None] | None = None,
        proxy: str | None = None,
        source: str = "given",
    ) -> None:
        self.server = server.rstrip("/")
        self.ssl_context = ssl_context
        self.proxy = proxy or None
        self.source = source
        self._header = authorization
        self._refresh = refresh
        self._checked_at: float | None = None
        self._refreshing: asyncio.Future[str | None] | None = None
        self._thread_lock = threading.Lock()

    def __repr__(self) -> str:  # never the header
        return f"Credentials({self.server!r}, source={self.source!r})"

    def current_authorization(self) -> str | None:
        """Ask the loader's hook for the header now (blocking: it may run an exec plugin)."""
        if self._refresh is None:
            return self._header
        with self._thread_lock:
            self._header = self._refresh()
        return self._header

    async def authorization(self, *, force: bool = False) -> str | None:
        """The header to send, refreshed in a thread when stale (or ``force``: after a 401).

        Concurrent callers share one refresh, so a thousand pools hitting a 401 together run
        the exec plugin once.
        """
        if self._refresh is None:
            return self._header
        loop = asyncio.get_running_loop()
        fresh = self._checked_at is not None and loop.time() - self._checked_at < (
            TOKEN_CHECK_SECONDS
        )
        if fresh and not force:
            return self._header
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(
                loop.run_in_executor(_REFRESHER, self.current_authorization)
            )
        header = await asyncio.shield(self._refreshing)
        self._checked_at = loop.time()
        return header


def _private_dir() -> str:
    """A directory only this process's user can read, in memory when the system offers it."""
    shm = "/dev/shm"
    base = shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None
    return tempfile.mkdtemp(prefix="tide-kube-", dir=base)


def _ssl_context(config: Any) -> ssl.SSLContext | None:
    """The TLS context for a ``kubernetes.client.Configuration`` (None for plain HTTP)."""
    if not str(config.host).startswith("https"):
        return None
    cadata = Path(config.ssl_ca_cert).read_text() if config.ssl_ca_cert else None
    # With a CA in the kubeconfig only that CA is trusted, as kubectl does; without one, the
    # system's (a managed cluster behind a public certificate).
    context = ssl.create_default_context(cadata=cadata)
    if not config.verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if config.cert_file and config.key_file:
        context.load_cert_chain(config.cert_file, config.key_file)
    return context


def _credentials(config: Any, *, source: str, private: str) -> Credentials:
    hook_refresh: Callable[[], str | None] | None = None
    if config.refresh_api_key_hook is not None:

        def hook_refresh() -> str | None:
            header: str | None = config.get_api_key_with_prefix("BearerToken")
            # A refresh that wrote files (an exec plugin's certificate) recreated the
            # private directory; the header is all that is needed from it.
            shutil.rmtree(private, ignore_errors=True)
            return header

    return Credentials(
        config.host,
        ssl_context=_ssl_context(config),
        authorization=config.get_api_key_with_prefix("BearerToken"),
        refresh=hook_refresh,
        proxy=config.proxy,
        source=source,
    )


def _in_cluster(config: Any, *, directory: str, environ: Mapping[str, str]) -> str:
    from kubernetes.config.incluster_config import InClusterConfigLoader

    loader = InClusterConfigLoader(  # type: ignore[no-untyped-call,unused-ignore]
        token_filename=os.path.join(directory, "token"),
        cert_filename=os.path.join(directory, "ca.crt"),
        try_refresh_token=True,
        environ=environ,
    )
    loader.load_and_set(config)  # type: ignore[no-untyped-call,unused-ignore]
    return "in-cluster service account"


def _kubeconfig(config: Any, *, path: str, context: str | None, private: str) -> str:
    import kubernetes.config

    kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call,unused-ignore]
        config_file=path,
        context=context,
        client_configuration=config,
        # Never write refreshed tokens back into the user's kubeconfig.
        persist_config=False,
        temp_file_path=private,
    )
    return f"kubeconfig {path}" + (f" (context {context})" if context else "")


def login(
    *,
    kubeconfig: str | None = None,
    context: str | None = None,
    service_account_dir: str = SERVICE_ACCOUNT_DIR,
    environ: Mapping[str, str] | None = None,
) -> Credentials:
    """Resolve credentials the way kubectl does; raise ``LoginFailed`` saying why not.

    Blocking (files, maybe an exec plugin): call it from a thread in async code.
    """
    from kubernetes.client import Configuration
    from kubernetes.config import ConfigException

    env = os.environ if environ is None else environ
    explicit: str = kubeconfig or env.get("KUBECONFIG") or ""
    attempts: list[tuple[str, Callable[[Any, str], str]]] = []
    if explicit:
        attempts.append(
            (
                f"kubeconfig {explicit}",
                lambda c, p: _kubeconfig(c, path=explicit, context=context, private=p),
            )
        )
    else:
        if env.get("KUBERNETES_SERVICE_HOST"):
            attempts.append(
                (
                    f"service account in {service_account_dir}",
                    lambda c, p: _in_cluster(c, directory=service_account_dir, environ=env),
                )
            )
        attempts.append(
            (
                f"kubeconfig {DEFAULT_KUBECONFIG}",
                lambda c, p: _kubeconfig(c, path=DEFAULT_KUBECONFIG, context=context, private=p),
            )
        )
    failures = []
    for what, load in attempts:
        config = Configuration()
        private = _private_dir()
        try:
            source = load(config, private)
            return _credentials(config, source=source, private=private)
        except (ConfigException, OSError, ssl.SSLError, ValueError, KeyError) as exc:
            failures.append(f"{what}: {exc}")
        finally:
            # The loader wrote embedded certificates and keys here; the TLS context holds
            # them now, so nothing of them stays on any filesystem.
            shutil.rmtree(private, ignore_errors=True)
    raise LoginFailed("no usable Kubernetes credentials; tried " + "; ".join(failures))
