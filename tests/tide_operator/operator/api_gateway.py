"""A front door for the API emulator: TLS, authentication and outages, as a real server has.

kmock serves plain HTTP and believes everyone. A real kube-apiserver serves TLS with its own
CA, asks for a client certificate but does not require one (``CERT_OPTIONAL``: token users
have none), authenticates each request by certificate or bearer token, and answers 401 with a
``Status`` body otherwise. ``ApiGateway`` does that in front of the emulator and forwards
what it admits, streaming (watches stay open through it), so the operator's login is tested
against a server that refuses what a real one refuses.

It also fails like a real server: ``refuse()`` closes the listening socket and every open
connection (clients get ECONNREFUSED, as while an API server restarts), ``accept()`` listens
again on the same port; ``deny(n)`` answers the next ``n`` authenticated requests with 403,
as a restarted API server does before its RBAC caches have synced.

``Pki`` makes the certificates with the ``cryptography`` package: a CA, a server certificate
for 127.0.0.1, and a client certificate whose CN is the user name.
"""

from __future__ import annotations

import datetime
import ssl
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "host",
    "authorization",
    "content-encoding",
}


def _status(code: int, reason: str, message: str) -> web.Response:
    return web.json_response(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        },
        status=code,
    )


@dataclass(frozen=True)
class KeyPair:
    cert_pem: bytes
    key_pem: bytes


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class Pki:
    """A throwaway CA with a server certificate for 127.0.0.1 and one client certificate."""

    def __init__(self, *, user: str = "tide-operator") -> None:
        now = datetime.datetime.now(datetime.UTC)
        self._ca_key = _key()
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tide-test-ca")])
        self._ca_name = ca_name
        self._ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(self._ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._ca_key, hashes.SHA256())
        )
        self.ca_pem = self._ca.public_bytes(serialization.Encoding.PEM)
        self.server = self._issue("127.0.0.1", server=True)
        self.client = self._issue(user, server=False)

    def _issue(self, name: str, *, server: bool) -> KeyPair:
        import ipaddress

        now = datetime.datetime.now(datetime.UTC)
        key = _key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.COMMON_NAME, name),
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tide"),
                    ]
                )
            )
            .issuer_name(self._ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                        x509.DNSName("localhost"),
                    ]
                ),
                critical=False,
            )
        cert = builder.sign(self._ca_key, hashes.SHA256())
        return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _pem(key))

    def server_context(self, directory: Path) -> ssl.SSLContext:
        """The server side: its own certificate, client certificates optional but checked."""
        cert, key = directory / "server.crt", directory / "server.key"
        cert.write_bytes(self.server.cert_pem)
        key.write_bytes(self.server.key_pem)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        context.load_verify_locations(cadata=self.ca_pem.decode())
        context.verify_mode = ssl.CERT_OPTIONAL
        return context


class ApiGateway:
    """Authenticates like kube-apiserver, forwards to the emulator, fails on demand."""

    def __init__(
        self,
        upstream: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        tokens: set[str] | None = None,
        users: set[str] | None = None,
        upstream_authorization: str | None = None,
    ) -> None:
        self.upstream = upstream.rstrip("/")
        # What admitted requests carry upstream: the emulator knows the operator by its
        # token and holds its requests to the chart's RBAC and the API's contract.
        self.upstream_authorization = upstream_authorization
        self.ssl_context = ssl_context
        # Accepted bearer tokens and client-certificate common names.
        self.tokens: set[str] = set(tokens or ())
        self.users: set[str] = set(users or ())
        # Who was admitted ("token:<t>" or "cert:<cn>") and how often; 401s given.
        self.identities: Counter[str] = Counter()
        # (identity, method, path with query) of every admitted request.
        self.requests: list[tuple[str, str, str]] = []
        self.unauthorized = 0
        self.refused = False
        self._deny = 0
        self._deny_path = ""
        self.denied = 0
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    async def __aenter__(self) -> ApiGateway:
        self._client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        await self.accept()
        return self

    async def __aexit__(self, *_: Any) -> None:
        await self.refuse()
        if self._client is not None:
            await self._client.close()

    async def accept(self) -> None:
        """Listen (again, on the same port after ``refuse``)."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(
            runner, "127.0.0.1", self.port, ssl_context=self.ssl_context, reuse_address=True
        )
        await site.start()
        if not self.port:
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._runner = runner
        self.refused = False

    async def refuse(self) -> None:
        """Stop listening and drop every open connection (watches included)."""
        self.refused = True
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def deny(self, count: int, *, path: str = "") -> None:
        """Answer the next ``count`` authenticated requests whose path contains ``path``
        with 403, as a restarted API server does before its RBAC caches have synced."""
        self._deny = count
        self._deny_path = path

    def _identity(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token in self.tokens:
            return f"token:{token}"
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        if peer:
            # Only a certificate the CA signed gets here (the TLS layer checked it).
            fields = dict(item for rdn in peer.get("subject", ()) for item in rdn)
            if fields.get("commonName") in self.users:
                return f"cert:{fields['commonName']}"
        return None

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        who = self._identity(request)
        if who is None:
            self.unauthorized += 1
            return _status(401, "Unauthorized", "Unauthorized")
        self.identities[who] += 1
        self.requests.append((who, request.method, request.rel_url.path_qs))
        if self._deny > 0 and self._deny_path in request.path:
            self._deny -= 1
            self.denied += 1
            return _status(
                403,
                "Forbidden",
                f'{request.path} is forbidden: User "{who}" cannot {request.method.lower()} '
                "the resource (RBAC: the authorizer's caches have not synced yet)",
            )
        assert self._client is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        if self.upstream_authorization:
            headers["Authorization"] = self.upstream_authorization
        body = await request.read()
        async with self._client.request(
            request.method,
            self.upstream + request.rel_url.path_qs,
            headers=headers,
            data=body or None,
        ) as upstream:
            response = web.StreamResponse(
                status=upstream.status,
                headers={k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP},
            )
            await response.prepare(request)
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
            except ConnectionResetError:
                # The client went away mid-stream (a killed operator's watch): nothing to
                # answer, as on a real server.
                pass
            return response
