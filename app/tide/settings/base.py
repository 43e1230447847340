"""Settings shared by every environment; all deployment-specific values come from the
environment (see ``docs/configuration.md`` for the full list).

Debug is off unless asked for, and there is no default secret key outside ``local`` and
``test``: a production process without ``DJANGO_SECRET_KEY`` refuses to start.
"""

from __future__ import annotations

from pathlib import Path

import dj_database_url

from tide.settings.env import env_bool, env_int, env_list, env_str
from tide_celery.layout import transport_options_from_env

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("DJANGO_DEBUG", default=False)
SECRET_KEY = env_str("DJANGO_SECRET_KEY", default="")
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", default="localhost,127.0.0.1,[::1]")

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.admin",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "tide.jobs",
    "tide.health",
    "tide.samples",
    "tide.portal",
]

MIDDLEWARE = [
    "tide.health.middleware.PrometheusMiddleware",
    "tide.health.middleware.ProbeMiddleware",
    "tide.health.middleware.BodySizeLimitMiddleware",
    "tide.health.middleware.QueryStringMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Static files (Swagger UI, Redoc, the admin's CSS) straight from the installed
    # packages: no collectstatic step, no web server beside gunicorn.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "tide.urls"
WSGI_APPLICATION = "tide.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASE_URL = env_str("DATABASE_URL", default="postgres://postgres@127.0.0.1:5432/postgres")
DATABASES = {
    # Persistent connections: an API process answers many small requests, and a fresh
    # PostgreSQL connection costs more than the request itself. Health checks drop
    # connections the server closed while idle.
    "default": dj_database_url.parse(
        DATABASE_URL,
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60),
        conn_health_checks=True,
    )
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
# Only for ``collectstatic`` (e.g. to serve the files from a CDN); unset, nothing needs it.
STATIC_ROOT = env_str("DJANGO_STATIC_ROOT", default="") or None
# WhiteNoise finds the files in the apps' static folders at start-up (a few hundred files),
# so the image needs no collectstatic and its root filesystem stays read-only.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = False

# Django's admin (jobs, periodic tasks, users) at /admin/, behind its login. Local mode
# turns it on; a deployment chooses (it is one more login page facing the network).
TIDE_ADMIN_ENABLED = env_bool("TIDE_ADMIN_ENABLED", default=False)

# The sample tasks (tide.samples.*) are demonstrations: notify_shipping posts to any URL it
# is given, cpu_bound burns CPU for as long as asked. They are submittable only where this
# is on: local mode and the test settings turn it on, a deployment opts in.
TIDE_SAMPLE_TASKS = env_bool("TIDE_SAMPLE_TASKS", default=False)
# Hosts that tasks calling out (notify_shipping; users' tasks through
# tide.jobs.outbound.check_url) may reach: exact names, or ``*.example.com`` for its
# subdomains. Empty: none; a refused host fails the task before any request is made.
TIDE_OUTBOUND_HOSTS = env_list("TIDE_OUTBOUND_HOSTS", default="")

# Requests larger than this are refused with 413 before the view parses them: a job's
# arguments travel through the broker and the database, where megabytes do harm.
TIDE_MAX_REQUEST_BYTES = env_int("TIDE_MAX_REQUEST_BYTES", 256 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = TIDE_MAX_REQUEST_BYTES

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "tide.jobs.api.authentication.CachedTokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.CursorPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["tide.jobs.api.parsers.StrictJSONParser"],
    "EXCEPTION_HANDLER": "tide.jobs.api.errors.exception_handler",
}

# How long a process trusts a token it has checked (seconds; 0: check every request).
# A token deleted elsewhere stays accepted by other processes for at most this long.
TIDE_TOKEN_CACHE_SECONDS = env_int("TIDE_TOKEN_CACHE_SECONDS", 30)

SPECTACULAR_SETTINGS = {
    "TITLE": "Tide jobs API",
    "DESCRIPTION": "Submit Celery tasks and workflows, follow their progress, fetch results.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # The schema describes the API, not anyone's data: clients fetch it before they log in.
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "COMPONENT_SPLIT_REQUEST": True,
    # Swagger UI and Redoc load their JavaScript and CSS from drf-spectacular-sidecar,
    # served by this process: no CDN, so the docs work offline and behind a firewall.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SWAGGER_UI_SETTINGS": {"persistAuthorization": True, "displayRequestDuration": True},
    # Every refusal the API answers and every bound it enforces (tide.jobs.api.schema).
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "tide.jobs.api.schema.document_refusals",
    ],
}

# --- Celery -------------------------------------------------------------------------
# Read by tide.celery through config_from_object(namespace="CELERY"). Each default is
# chosen for workers that an autoscaler adds and removes at any time.
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", default="redis://127.0.0.1:6379/0")
# Job state lives in PostgreSQL; the result backend only carries what Celery itself needs
# (chord counters, group results). Redis brokers double as the backend by default; with
# RabbitMQ set CELERY_RESULT_BACKEND (a Redis URL) to use chords.
CELERY_RESULT_BACKEND = env_str("CELERY_RESULT_BACKEND", default="") or (
    CELERY_BROKER_URL if CELERY_BROKER_URL.startswith(("redis://", "rediss://")) else None
)
# Late acks: a task is acknowledged when it finishes, not when it is received, so a worker
# removed by scale-in or killed mid-task leaves its message on the broker to be redelivered.
CELERY_TASK_ACKS_LATE = True
# ... and when the worker process dies (SIGKILL, OOM) the message is requeued instead of
# being acknowledged as failed, which late acks alone would do.
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# One message reserved per process: prefetched messages sit idle on a busy worker while
# newly added workers starve, and they are what scale-in would strand.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# JSON only: pickle from the broker is remote code execution for anyone who can publish.
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# The longest task a Tide worker may run. The Redis transport redelivers any unacked
# message older than the visibility timeout, so it must stay above this, or a long task
# runs twice. Hard time limits default to it so no task outlives the timeout.
TIDE_LONGEST_TASK_SECONDS = env_int("TIDE_LONGEST_TASK_SECONDS", 3600)
CELERY_TASK_TIME_LIMIT = TIDE_LONGEST_TASK_SECONDS
# Bounds on what one submission may ask for (the API answers 400 beyond them). A job's
# hard time limit may not pass the longest task, for the visibility timeout's sake above;
# retries and their delays are capped so one job cannot occupy the queue for days.
TIDE_JOB_MAX_TIME_LIMIT_SECONDS = min(
    env_int("TIDE_JOB_MAX_TIME_LIMIT_SECONDS", TIDE_LONGEST_TASK_SECONDS),
    TIDE_LONGEST_TASK_SECONDS,
)
TIDE_JOB_MAX_RETRIES = env_int("TIDE_JOB_MAX_RETRIES", 10)
TIDE_JOB_MAX_RETRY_DELAY_SECONDS = env_int("TIDE_JOB_MAX_RETRY_DELAY_SECONDS", 3600)
# The most jobs one bulk submission may carry: one transaction and one response hold
# them all, so the bound keeps a request's time and memory in proportion.
TIDE_BULK_MAX_JOBS = env_int("TIDE_BULK_MAX_JOBS", 1000)
# The most tasks one workflow may hold, counted through its nested chains, groups and
# chords, with their link/link_error callbacks: each is a row and a message.
TIDE_WORKFLOW_MAX_TASKS = env_int("TIDE_WORKFLOW_MAX_TASKS", 1000)
# kombu's default Redis key layout (priority lists ``queue``, ``queue\x06\x163``, ``…6``,
# ``…9``; bindings joined by ``\x06\x16``): every process on a shared broker must agree on
# it, or remote control between them breaks (a stock worker stops answering and
# consuming). So Tide sets no ``sep`` and no ``priority_steps`` of its own; the API maps its
# ten priorities onto kombu's four classes (docs/api.md). ``TIDE_BROKER_TRANSPORT_OPTIONS``
# (a JSON object) carries the options of an app whose broker Tide's processes share.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": TIDE_LONGEST_TASK_SECONDS * 2,
    **(transport_options_from_env() or {}),
}
if prefix := env_str("CELERY_BROKER_KEYPREFIX", default=""):
    CELERY_BROKER_TRANSPORT_OPTIONS["global_keyprefix"] = prefix
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A publish to a broker that is down fails fast (the API answers 503) instead of
# blocking a request thread through kombu's default retry schedule.
CELERY_BROKER_CONNECTION_TIMEOUT = env_int("CELERY_BROKER_CONNECTION_TIMEOUT", 2)
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_QUEUE_MAX_PRIORITY = 10
CELERY_TASK_DEFAULT_PRIORITY = 5
# Job rows record "started" (JobTask.before_start); a STARTED write to the result
# backend as well would cost a Redis round trip per task for nothing.
CELERY_TASK_TRACK_STARTED = False
# No "task-sent" event per publish: it is a second broker write on the submit path,
# and queue depth comes from the exporter, not from events.
CELERY_TASK_SEND_SENT_EVENT = False
CELERY_WORKER_SEND_TASK_EVENTS = True
# A worker told to stop finishes what it runs (warm shutdown) and takes nothing new.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
CELERY_RESULT_EXPIRES = env_int("TIDE_RESULT_EXPIRES_SECONDS", 7 * 24 * 3600)

# Queues this deployment knows: configured here (and from routes), they are listed by the
# API and watched by the exporter even before any worker has consumed from them.
TIDE_QUEUES = env_list("TIDE_QUEUES", default="default,cpu,io,priority")
CELERY_TASK_ROUTES = {
    "tide.samples.cpu_bound": {"queue": "cpu"},
    "tide.samples.io_bound": {"queue": "io"},
    "tide.samples.notify_shipping": {"queue": "io"},
}
# Beat reads its schedule from the database (django-celery-beat), so periodic tasks made
# through the API or the admin start, change, pause and stop while beat runs (it checks
# for changes on every tick, at most CELERY_BEAT_MAX_LOOP_INTERVAL apart). The built-in
# entries below are written into that store each time beat starts.
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_BEAT_MAX_LOOP_INTERVAL = env_int("CELERY_BEAT_MAX_LOOP_INTERVAL", 5)
CELERY_BEAT_SCHEDULE = {
    "purge-expired-jobs": {
        "task": "tide.jobs.purge_expired",
        "schedule": env_int("TIDE_PURGE_INTERVAL_SECONDS", 3600),
    },
}
# How long finished jobs are kept before the periodic purge deletes them.
TIDE_JOB_RETENTION_SECONDS = env_int("TIDE_JOB_RETENTION_SECONDS", 7 * 24 * 3600)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("TIDE_LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
