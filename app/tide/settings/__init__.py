"""Django settings, split by environment (cookiecutter-django style).

``base`` holds everything shared and reads all configuration from the environment;
``local``, ``test`` and ``production`` only change what differs. Pick one with
``DJANGO_SETTINGS_MODULE`` (the CLI and ``manage.py`` default to ``tide.settings.local``).
"""
