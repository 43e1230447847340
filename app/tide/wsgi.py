"""WSGI entry point for gunicorn (``tide api``)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tide.settings.local")
application = get_wsgi_application()
