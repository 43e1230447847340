"""Where tasks may call out to: ``TIDE_OUTBOUND_HOSTS``.

A task that calls a URL its job was given (``tide.samples.notify_shipping``) lets anyone who
can submit it make the workers reach any address they can reach: cloud metadata, internal
services. ``check_url`` refuses a host outside the allow-list before any request is made;
the task fails at once with ``OutboundRefused`` (not retried: the list will not change
between attempts).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from django.conf import settings


class OutboundRefused(PermissionError):
    """The URL's host is not in ``TIDE_OUTBOUND_HOSTS``."""


def host_allowed(host: str, allowed: list[str]) -> bool:
    host = host.lower().rstrip(".")
    for entry in allowed:
        entry = entry.strip().lower()
        if entry.startswith("*.") and host.endswith(entry[1:]):
            return True
        if host == entry.strip("[]") or f"[{host}]" == entry:
            return True
    return False


def check_url(url: str) -> str:
    """``url`` if its scheme is http(s) and its host is allowed; ``OutboundRefused`` if not."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise OutboundRefused(f"Refused to call {url!r}: only http(s) URLs with a host.")
    allowed = list(settings.TIDE_OUTBOUND_HOSTS)
    if not host_allowed(parts.hostname, allowed):
        raise OutboundRefused(
            f"Refused to call {parts.hostname!r}: it is not in TIDE_OUTBOUND_HOSTS "
            f"({', '.join(allowed) or 'empty: no host'})."
        )
    return url
