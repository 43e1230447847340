"""Production settings: everything from the environment, HTTPS assumed at the edge.

``manage.py check --deploy`` passes with these. TLS is usually terminated by the ingress,
so the proxy header tells Django the original scheme; HSTS and secure cookies follow.
"""

from __future__ import annotations

from tide.settings.base import *  # noqa: F403
from tide.settings.env import env_bool, env_int, env_str

# No fallback: a production process without a real key must not start.
SECRET_KEY = env_str("DJANGO_SECRET_KEY")
DEBUG = False

SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# Probes and in-cluster scrapes speak plain HTTP to the pod: they are exempt from the
# redirect, everything else is sent to HTTPS.
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", default=True)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SECURE_HSTS_SECONDS = env_int("DJANGO_SECURE_HSTS_SECONDS", 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
CSRF_TRUSTED_ORIGINS = [
    origin for origin in env_str("DJANGO_CSRF_TRUSTED_ORIGINS", default="").split(",") if origin
]
