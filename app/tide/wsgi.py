"""WSGI entry point for gunicorn (``tide api``)."""

import os

from django.conf import settings
from django.core.wsgi import get_wsgi_application

from tide.health.middleware import ChunkedBody

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tide.settings.local")
application = ChunkedBody(get_wsgi_application(), settings.TIDE_MAX_REQUEST_BYTES)
