"""Tasklight settings: one module, every value from the environment.

With no variable set, every part runs embedded (SQLite, a broker and a channel
layer that need no server) so that ``make run`` works on a bare machine.
Production values come only from the environment; see ``.env.example``.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import environ
from django.utils.csp import CSP

from tasklight.channel_layer import redis_timeouts
from tasklight.db import check_pooled_connection
from tasklight.envvars import boolean, decimal_number, log_level, whole_number
from tasklight.rate_limits import InvalidRate, parse_rate

BASE_DIR = Path(__file__).resolve().parent.parent

# django-environ reads the strings, lists and URLs; tasklight/envvars.py the
# numbers, booleans and log level, which it checks.
env = environ.Env()
# A .env file is read too, as DESIGN.md §1 promises; real variables win.
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DATA_DIR = Path(env.str("TASKLIGHT_DATA_DIR", default=str(BASE_DIR / "data")))

DATABASE_URL = env.str("DATABASE_URL", default="")
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="")
CHANNEL_LAYER_URL = env.str("CHANNEL_LAYER_URL", default="")

# Embedded mode (nothing configured): DEBUG defaults to on. Each part left
# unset runs on a local SQLite file: with DEBUG off, all of them or none (below).
EMBEDDED = not (DATABASE_URL or CELERY_BROKER_URL or CHANNEL_LAYER_URL)

DEBUG = boolean("DEBUG", default=EMBEDDED)
if not DEBUG and not EMBEDDED:
    # A part left unset would run on its embedded SQLite file, which no other
    # machine sees: a web process without CELERY_BROKER_URL queued tasks that
    # no worker ever read, a worker without DATABASE_URL retried for ever on
    # "no such table". Only a development set-up (DEBUG on) may mix them.
    _missing = [
        name
        for name, value in (
            ("DATABASE_URL", DATABASE_URL),
            ("CELERY_BROKER_URL", CELERY_BROKER_URL),
            ("CHANNEL_LAYER_URL", CHANNEL_LAYER_URL),
        )
        if not value
    ]
    if _missing:
        raise environ.ImproperlyConfigured(
            f"DATABASE_URL, CELERY_BROKER_URL and CHANNEL_LAYER_URL must all be set when DEBUG is off "
            f"(or none, for embedded mode); missing: {', '.join(_missing)}"
        )
# A fixed development key is only acceptable where DEBUG is on.
SECRET_KEY = env.str("SECRET_KEY", default="insecure-dev-key-only-for-embedded-mode" if DEBUG else "")
if not SECRET_KEY:
    raise environ.ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off")
# Earlier keys, still accepted for sessions made under them (a session made
# under a fallback is re-signed under SECRET_KEY at its next request): with
# them, a new key rolls out without signing anyone out
# (docs/operations.md#secret_key-on-every-process). Comma-separated.
SECRET_KEY_FALLBACKS = env.list("SECRET_KEY_FALLBACKS", default=[])
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
HTTPS = boolean("HTTPS", default=not DEBUG)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "tasklight",
    "accounts",
    "workloads",
    "live",
]

MIDDLEWARE = [
    # First: every line logged while handling a request carries its id.
    "tasklight.middleware.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # Probes and scrapes by a process's own address, over plain HTTP (with
    # SECURE_REDIRECT_EXEMPT); the security headers above still apply.
    "tasklight.middleware.ProbeMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    # Before CommonMiddleware's APPEND_SLASH redirect.
    "tasklight.middleware.ApiPathMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Before any body is read: views and process_view run below it. The whole
    # chain runs in sync mode, in the request's one thread
    # (tasklight/asgi_handler.py; docs/benchmarks.md).
    "tasklight.middleware.BodySizeLimitMiddleware",
    "tasklight.middleware.DependencyUnavailableMiddleware",
]

# Django's database sessions; one that ends closes its sockets (accounts/sessions.py).
SESSION_ENGINE = "accounts.sessions"

ROOT_URLCONF = "tasklight.urls"
ASGI_APPLICATION = "tasklight.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
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

# --- Database -------------------------------------------------------------
# Checked in every process, whichever uses them: a bad value stops the
# release (migrate_all) before any web process or worker starts with it.
CONN_MAX_AGE = whole_number("CONN_MAX_AGE", 0, minimum=0, unit="seconds")
WORKER_CONN_MAX_AGE = whole_number("WORKER_CONN_MAX_AGE", 600, minimum=0, unit="seconds")
# Below the pool's min_size (2), psycopg_pool refuses to open at every request.
DATABASE_POOL_MAX_SIZE = whole_number("DATABASE_POOL_MAX_SIZE", 20, minimum=2)
# libpq's connection parameters that end a connection whose peer stopped
# answering (see below); ?name=value in DATABASE_URL overrides each.
DATABASE_DEAD_PEER_OPTIONS = {
    "tcp_user_timeout": 10_000,  # milliseconds
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}
if DATABASE_URL:
    DATABASES = {"default": env.db_url_config(DATABASE_URL)}
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    DATABASES["default"]["CONN_MAX_AGE"] = CONN_MAX_AGE
    # "web" (tasklight/asgi.py), "worker" (tasklight/celery.py), or unset.
    process = os.environ.get("TASKLIGHT_PROCESS")
    postgresql = DATABASES["default"]["ENGINE"].endswith("postgresql")
    if postgresql:
        # pg_stat_activity tells the processes' connections apart (docs/operations.md).
        DATABASES["default"].setdefault("OPTIONS", {})["application_name"] = env.str(
            "DATABASE_APPLICATION_NAME", default=f"tasklight-{process}" if process else "tasklight"
        )
        # libpq waits for ever by default: a server that accepts the TCP
        # connection but never answers (a stuck host, a wrong port behind a
        # proxy) hung the release's migrate_all. A ?connect_timeout= in the URL wins.
        DATABASES["default"]["OPTIONS"].setdefault("connect_timeout", 10)
        # connect_timeout and the pool's timeout bound getting a connection,
        # not a statement sent on one: a host that died or a network
        # partition (packets dropped, nothing acknowledged, no reset) left a
        # request or a task waiting for ever on a connection it held. The
        # kernel drops such a connection instead (libpq's parameters, set on
        # its socket), psycopg then raises OperationalError: a 503
        # database_unavailable, a task retried. tcp_user_timeout (ms): data
        # sent and not acknowledged for 10 s. Keepalives: a connection that
        # waits for an answer with all it sent acknowledged (the host died
        # after taking the query) is probed after 10 s of silence; the
        # unanswered probes end it within tcp_user_timeout (Linux lets
        # TCP_USER_TIMEOUT decide then), about 20 s after the last byte.
        # A server that answers acknowledges, so a legitimately long
        # statement is never cut (docs/operations.md). The URL's own wins.
        for name, value in DATABASE_DEAD_PEER_OPTIONS.items():
            DATABASES["default"]["OPTIONS"].setdefault(name, value)
    if process == "web" and postgresql:
        # Django runs each request's sync code in a thread of its own under
        # ASGI: without a bound, 200 concurrent clients open 200 connections
        # and PostgreSQL refuses the 101st. A pool caps them per web process;
        # a request waits for a free connection instead. Only the web process:
        # Celery's prefork pool forks, and a pool does not survive a fork.
        DATABASES["default"]["CONN_MAX_AGE"] = 0
        DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
            "min_size": 2,
            "max_size": DATABASE_POOL_MAX_SIZE,
            "timeout": 10,
            # psycopg_pool retries a failed connection with a backoff that
            # doubles up to this long (5 min by default): after an outage of
            # a minute or two, an idle web process would wait for its next
            # try long after PostgreSQL is back, answering 503 meanwhile.
            # Giving up after 2 s lets the next request try again at once
            # (tests/test_faults.py).
            "reconnect_timeout": 2,
            # One broken connection found: all idle ones are checked at once.
            "check": check_pooled_connection,
        }
    elif process == "worker":
        # A prefork pool process runs one task at a time on one thread: it
        # keeps its connection from task to task (run_task drops it once older
        # than this, or broken) instead of paying PostgreSQL a new backend per
        # task (docs/benchmarks.md).
        DATABASES["default"]["CONN_MAX_AGE"] = WORKER_CONN_MAX_AGE
        # Celery's fix-up would otherwise close it after every task.
        CELERY_DB_REUSE_MAX = 1_000_000
else:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": DATA_DIR / "tasklight.sqlite3",
            "OPTIONS": {
                # WAL lets the web process read while the worker writes;
                # IMMEDIATE takes the write lock at BEGIN, so two writers wait
                # for each other (timeout) instead of failing with "database
                # is locked" when a read transaction upgrades to a write.
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
            },
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Channel layer --------------------------------------------------------
if CHANNEL_LAYER_URL:
    CHANNEL_LAYERS = {
        "default": {
            # The pub/sub layer: one PUBLISH per group_send and no per-channel
            # queues that expire or fill up (STACK-NOTES: ~1 ms p50);
            # channels_redis' own, minus a leak (tasklight/channel_layer.py).
            "BACKEND": "tasklight.channel_layer.RedisPubSubChannelLayer",
            "CONFIG": {
                # Each host's options go to redis-py's connection pool
                # (channels_redis.utils.create_pool): every wait on a Redis
                # that does not answer ends after REDIS_TIMEOUT_SECONDS.
                "hosts": [{"address": CHANNEL_LAYER_URL, "max_connections": 1000, **redis_timeouts()}],
                "prefix": env.str("CHANNEL_LAYER_PREFIX", default="tasklight"),
            },
        }
    }
else:
    # channels-lite on its own SQLite file, so that its 10 ms polling never
    # contends with the application's writes.
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES["channels"] = {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": DATA_DIR / "channels.sqlite3",
        "OPTIONS": {"init_command": "PRAGMA journal_mode=WAL;", "timeout": 20},
    }
    INSTALLED_APPS.append("channels_lite")
    DATABASE_ROUTERS = ["tasklight.routers.EmbeddedChannelLayerRouter"]
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_lite.layers.aio.AIOSQLiteChannelLayer",
            "CONFIG": {"database": "channels", "polling_interval": 0.01},
        }
    }

# --- Cache (rate limits, API tokens) -----------------------------------------
# Rate limits and cached tokens must be shared by every web process: they use
# the Redis of the channel layer, under their own key prefix. Embedded mode
# has one web process.
CACHE_MAX_CONNECTIONS = whole_number("CACHE_MAX_CONNECTIONS", 100, minimum=1)
if CHANNEL_LAYER_URL:
    CACHES = {
        "default": {
            # Django's RedisCache, minus a new client and connection per request (tasklight/cache.py).
            "BACKEND": "tasklight.cache.SharedRedisCache",
            "LOCATION": CHANNEL_LAYER_URL,
            "KEY_PREFIX": env.str("CHANNEL_LAYER_PREFIX", default="tasklight") + "-cache",
            "OPTIONS": {
                # Every request in flight may hold a connection: past the
                # limit a request waits for one (up to `timeout` s) instead of
                # failing with MaxConnectionsError, as redis-py's default pool does.
                "pool_class": "redis.BlockingConnectionPool",
                "max_connections": CACHE_MAX_CONNECTIONS,
                "timeout": 10,
                # A Redis that does not answer holds up a request as briefly as
                # it holds up the channel layer (tasklight/channel_layer.py).
                **redis_timeouts(),
            },
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# --- Celery ---------------------------------------------------------------
CELERY_BROKER_URL = CELERY_BROKER_URL or f"sqla+sqlite:///{DATA_DIR / 'broker.sqlite3'}"
# kombu's SQL transport polls its table; tasklight/celery.py applies this.
EMBEDDED_BROKER_POLLING_INTERVAL = 0.05
# How often a worker on it looks whether it was asked to stop (Celery's 2 s
# is too slow for make run's Ctrl-C; tasklight/celery.py).
EMBEDDED_BROKER_STOP_CHECK = 0.25
CELERY_TASK_DEFAULT_QUEUE = env.str("TASKLIGHT_QUEUE", default="tasklight")
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# Task state lives in our own table; Celery's result backend stays off.
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
# Acknowledge after the task ran, and requeue it if the worker process dies:
# a task is never lost with a dying worker (DESIGN.md §3).
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# A worker whose broker connection drops while a task runs lets the task run
# on: it ends once, and the message RabbitMQ delivers again is left to it by
# the lease, then dropped (docs/lifecycle.md). Celery 6 is to turn this on by
# default, which would stop such a task and run it again from the start
# elsewhere; it warns of that at every connection loss, a long WARNING that
# tasklight/celery.py silences, the choice being made here.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_WORKER_CONCURRENCY = whole_number("WORKER_CONCURRENCY", 2, minimum=1)
# Celery's monitoring events (Flower's feed) cost a broker message each: one
# per task from the web (task-sent), three or more from the worker. Off unless
# CELERY_EVENTS=1: Flower turns the workers' on itself while it runs (its
# --enable-events, on by default). docs/operations.md#flower.
CELERY_EVENTS = boolean("CELERY_EVENTS", default=False)
CELERY_WORKER_SEND_TASK_EVENTS = CELERY_EVENTS
CELERY_TASK_SEND_SENT_EVENT = CELERY_EVENTS
# Time limits for workloads that declare none (seconds).
TASK_SOFT_TIME_LIMIT = whole_number("TASK_SOFT_TIME_LIMIT", 3660, minimum=1, unit="seconds")
TASK_TIME_LIMIT = whole_number("TASK_TIME_LIMIT", 3720, minimum=1, unit="seconds")
# The soft limit fails the task with a readable error; at or past the hard
# one, the kill comes first and the task is never told why.
if TASK_SOFT_TIME_LIMIT >= TASK_TIME_LIMIT:
    raise environ.ImproperlyConfigured(
        f"TASK_SOFT_TIME_LIMIT ({TASK_SOFT_TIME_LIMIT}) must be less than TASK_TIME_LIMIT ({TASK_TIME_LIMIT})"
    )
# Modules with more @workload functions, imported at start-up (web and worker).
WORKLOAD_MODULES = env.list("WORKLOAD_MODULES", default=[])
# A running task whose owner cancelled it and that does not stop by itself at
# its next cancellation check within this many seconds is killed.
CANCEL_GRACE_SECONDS = decimal_number("CANCEL_GRACE_SECONDS", 5.0, minimum=0, unit="seconds")
# How often a running task's watchdog renews its lease and looks for a cancel
# request (seconds), and how old a lease must be before a redelivered task is
# taken over by another worker (its first worker is presumed dead).
CANCEL_POLL_SECONDS = decimal_number("CANCEL_POLL_SECONDS", 1.0, minimum=0, minimum_allowed=False, unit="seconds")
TASK_LEASE_SECONDS = decimal_number("TASK_LEASE_SECONDS", 10.0, minimum=0, minimum_allowed=False, unit="seconds")
# What the lease must outlast (docs/lifecycle.md#delivery-guarantees): the gap between two
# renewals of a healthy task, one failed renewal included (the watchdog tries
# again at its next poll), and a cancelled task's grace, during which it is no
# longer renewed. Past it a redelivered message takes the task over: a healthy
# one would run twice, and a cancelled one that ignores its cancel would be
# closed by the other worker and its own watchdog would no longer kill it.
if TASK_LEASE_SECONDS <= 2 * CANCEL_POLL_SECONDS:
    raise environ.ImproperlyConfigured(
        f"TASK_LEASE_SECONDS ({TASK_LEASE_SECONDS:g}) must be more than twice CANCEL_POLL_SECONDS "
        f"({CANCEL_POLL_SECONDS:g}), which renews it"
    )
if TASK_LEASE_SECONDS <= CANCEL_GRACE_SECONDS:
    raise environ.ImproperlyConfigured(
        f"TASK_LEASE_SECONDS ({TASK_LEASE_SECONDS:g}) must be more than CANCEL_GRACE_SECONDS "
        f"({CANCEL_GRACE_SECONDS:g}), during which a cancelled task's lease is not renewed"
    )
# A task whose worker died while running it runs again from the start, up to
# this many starts in all; found running after the last one (its workload
# ends its own process: os._exit, a segfault, the out-of-memory killer), it
# fails instead of killing a pool process on every delivery (docs/lifecycle.md).
TASK_MAX_STARTS = whole_number("TASK_MAX_STARTS", 3, minimum=1, maximum=100)
# A task that the worker taking it cannot run (its workload is not installed
# there, or that worker's version of the workload refuses the parameters a
# web process accepted: web and workers of two releases during a rolling
# deploy, or WORKLOAD_MODULES that differ) goes back to the queue for another
# worker, for up to this many seconds after the first worker handed it back;
# then it fails, naming why (docs/operations.md#version-skew-between-web-and-workers).
TASK_SKEW_WAIT_SECONDS = decimal_number("TASK_SKEW_WAIT_SECONDS", 600.0, minimum=0, unit="seconds")
# Stored events older than this are deleted; a client resuming from before
# them is told to resync (docs/events.md).
EVENT_RETENTION_DAYS = decimal_number("EVENT_RETENTION_DAYS", 7, minimum=0, minimum_allowed=False, unit="days")
# How often each worker deletes expired events and idempotency keys.
CLEANUP_INTERVAL_SECONDS = decimal_number(
    "CLEANUP_INTERVAL_SECONDS", 3600, minimum=0, minimum_allowed=False, unit="seconds"
)
# Per user: tasks running at once (the rest wait queued) and queueing rate.
# At 0 every task would wait queued for ever.
MAX_RUNNING_TASKS_PER_USER = whole_number("MAX_RUNNING_TASKS_PER_USER", 4, minimum=1)
TASK_RATE_LIMIT = env.str("TASK_RATE_LIMIT", default="120/min")
# The relay re-sends queued tasks the broker never accepted, every
# RELAY_INTERVAL_SECONDS, once they are RELAY_MIN_AGE_SECONDS old.
# At 0 the relay spins: some 470 UPDATEs a second per worker.
RELAY_INTERVAL_SECONDS = decimal_number("RELAY_INTERVAL_SECONDS", 5.0, minimum=0, minimum_allowed=False, unit="seconds")
RELAY_MIN_AGE_SECONDS = decimal_number("RELAY_MIN_AGE_SECONDS", 5.0, minimum=0, unit="seconds")
# kombu's SQL transport (the embedded broker) never delivers again a message
# whose worker died: it stays hidden, and its task "running". With it, the
# relay also re-sends running tasks whose lease was last renewed more than
# three leases ago (docs/lifecycle.md). RabbitMQ delivers such messages again.
RESEND_ABANDONED_TASKS = CELERY_BROKER_URL.startswith("sqla+")
# Whether a part keeps its files in DATA_DIR (make run locks it then:
# tasklight/make_run.py).
USES_DATA_DIR = not DATABASE_URL or RESEND_ABANDONED_TASKS or not CHANNEL_LAYER_URL
# Keep publishing to a down broker short: the relay sends the task later.
CELERY_BROKER_CONNECTION_TIMEOUT = 2
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}
# RabbitMQ confirms every task message (a POST's, sent by its process's
# outbox thread, the relay's, a resend: workloads/confirmed.py): its task
# counts as sent only once it has. A confirm not back within this many
# seconds fails the send, and the relay sends the task later; the same
# bound holds every read and write of those connections.
BROKER_PUBLISH_TIMEOUT = 2.0

# --- Auth -----------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "home"

SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# Probes and Prometheus come over plain HTTP to a process's own address
# (tasklight/middleware.py ProbeMiddleware): a 301 would pass many probes.
PROBE_PATHS = ("healthz", "readyz", "metrics")
SECURE_REDIRECT_EXEMPT = [rf"^{path}$" for path in PROBE_PATHS]
if HTTPS:
    SECURE_SSL_REDIRECT = boolean("SECURE_SSL_REDIRECT", default=True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = whole_number("SECURE_HSTS_SECONDS", 31536000, minimum=0, unit="seconds")
    SECURE_HSTS_INCLUDE_SUBDOMAINS = boolean("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=True)
    SECURE_HSTS_PRELOAD = boolean("SECURE_HSTS_PRELOAD", default=True)
# Pages run only our own static script and styles: no inline script anywhere.
# connect-src 'self' covers same-origin ws:// and wss:// in current browsers.
SECURE_CSP = {
    "default-src": [CSP.SELF],
    "script-src": [CSP.SELF],
    "style-src": [CSP.SELF],
    "img-src": [CSP.SELF, "data:"],
    "connect-src": [CSP.SELF],
    "frame-ancestors": [CSP.NONE],
    "base-uri": [CSP.SELF],
    "form-action": [CSP.SELF],
    "object-src": [CSP.NONE],
}
# Log-in attempts that fail, per account and per client address, before 429.
LOGIN_FAILURES_PER_ACCOUNT = whole_number("LOGIN_FAILURES_PER_ACCOUNT", 5, minimum=1)
LOGIN_FAILURES_PER_ADDRESS = whole_number("LOGIN_FAILURES_PER_ADDRESS", 20, minimum=1)
LOGIN_FAILURE_WINDOW_SECONDS = whole_number("LOGIN_FAILURE_WINDOW_SECONDS", 900, minimum=1, unit="seconds")
# WebSocket abuse limits (docs/events.md): sockets per user per web process;
# frames a socket may send (burst, then per second) before it is closed.
MAX_SOCKETS_PER_USER = whole_number("MAX_SOCKETS_PER_USER", 20, minimum=1)
WS_FRAME_BURST = whole_number("WS_FRAME_BURST", 30, minimum=1)
WS_FRAME_RATE = decimal_number("WS_FRAME_RATE", 5, minimum=0, minimum_allowed=False)
# An open socket looks its credential up again (its token still there, its
# session still signing its user in) at least this often, so that one whose
# credential ended closes even if the message saying so was lost (Redis
# away at that moment): one indexed lookup per socket per 45 s on average
# (docs/events.md).
WS_CREDENTIAL_CHECK_SECONDS = whole_number("WS_CREDENTIAL_CHECK_SECONDS", 60, minimum=1, unit="seconds")
# Anonymous sign-ups per client address.
SIGNUP_RATE_LIMIT = env.str("SIGNUP_RATE_LIMIT", default="30/hour")
# Both in DRF's format, read here (tasklight/rate_limits.py) rather than at the first request.
for _name, _rate in (("TASK_RATE_LIMIT", TASK_RATE_LIMIT), ("SIGNUP_RATE_LIMIT", SIGNUP_RATE_LIMIT)):
    try:
        parse_rate(_rate)
    except InvalidRate as exc:
        raise environ.ImproperlyConfigured(f"{_name} must be a count per second, minute, hour or day: {exc}") from None
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# --- REST API -------------------------------------------------------------
# An API token and its user are cached this long (seconds); deleting the
# token or saving the user drops them at once (accounts/authentication.py).
# 0: not cached.
TOKEN_CACHE_SECONDS = whole_number("TOKEN_CACHE_SECONDS", 300, minimum=0, unit="seconds")
REST_FRAMEWORK = {
    # A token header authenticates alone; the session (with CSRF) otherwise.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.CachedTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["tasklight.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "tasklight.errors.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Tasklight API",
    "DESCRIPTION": "Queue long-running workloads and follow them live.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "tasklight.openapi.add_error_responses",
    ],
}
# JSON bodies over this size answer 413. text_stats takes up to 1 MiB of text,
# which JSON escaping can grow; 4 MiB leaves room for that and no more.
API_MAX_BODY_BYTES = whole_number("API_MAX_BODY_BYTES", 4 * 1024 * 1024, minimum=1, unit="bytes")
DATA_UPLOAD_MAX_MEMORY_SIZE = API_MAX_BODY_BYTES

# --- Static files, i18n ---------------------------------------------------
STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
# WhiteNoise serves the few static files straight from the source folders,
# so no collectstatic step is needed to run.
WHITENOISE_USE_FINDERS = True
# collectstatic's destination, for platforms whose builds run it (Heroku's
# Python buildpack does, and failed without one). Without a collectstatic
# it does not exist, which WhiteNoise would warn of in every process.
STATIC_ROOT = BASE_DIR / "staticfiles"
warnings.filterwarnings("ignore", message=f"No directory at: {re.escape(str(STATIC_ROOT))}", category=UserWarning)
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Logs and metrics (docs/observability.md) -----------------------------
# JSON lines in production, a readable line in embedded mode; each line with
# the request id (web) or the task id (worker): tasklight/logs.py.
LOG_FORMAT = env.str("LOG_FORMAT", default="plain" if EMBEDDED else "json")
if LOG_FORMAT not in ("json", "plain"):
    raise environ.ImproperlyConfigured(f"LOG_FORMAT must be json or plain, not {LOG_FORMAT!r}")
LOG_LEVEL = log_level("LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "context": {"()": "tasklight.logs.ContextFilter"},
        "client_noise": {"()": "tasklight.logs.ClientNoiseFilter"},
        "watchdog_exit": {"()": "tasklight.logs.WatchdogExitFilter"},
        "channel_layer_outage": {"()": "tasklight.logs.ChannelLayerOutageFilter"},
        "lost_ack": {"()": "tasklight.logs.LostAckFilter"},
        "reject": {"()": "tasklight.logs.RejectFilter"},
        "dependency_down": {"()": "tasklight.logs.DependencyDownFilter"},
    },
    "formatters": {
        "plain": {"()": "tasklight.logs.PlainFormatter"},
        "json": {"()": "tasklight.logs.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["context", "client_noise", "watchdog_exit", "channel_layer_outage", "lost_ack", "reject"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # uvicorn's own lines in the same format, through the same handler, at
        # LOG_LEVEL too: its access lines are INFO (uvicorn would keep them at
        # INFO whatever LOG_LEVEL says; they cost ~9 % of a request's CPU).
        "uvicorn": {"handlers": ["console"], "level": LOG_LEVEL, "propagate": False},
        "uvicorn.access": {"handlers": ["console"], "level": LOG_LEVEL, "propagate": False},
        # Django's own logging gives "django" a handler of its own when DEBUG
        # is on (make run): without this, each of its lines came twice.
        "django": {"handlers": [], "level": LOG_LEVEL, "propagate": True},
        # Its line for each 503 answered while a dependency is down: a WARNING a minute.
        "django.request": {"handlers": [], "filters": ["dependency_down"], "propagate": True},
        # Celery gives a logger with no handler one of its own, in its plain
        # format: the pool's "Process ... exited with signal 9" lines
        # (billiard's logger) and workloads' task loggers. Ours, in LOG_FORMAT.
        "multiprocessing": {"handlers": ["console"], "propagate": False},
        "celery.task": {"handlers": ["console"], "propagate": False},
        # One line per terminal event sent to a socket: off unless asked for.
        "live.delivery": {"level": "INFO" if boolean("LOG_DELIVERIES", default=False) else "WARNING"},
    },
}
# Bearer token of GET /metrics; unset, the endpoint answers 404.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
# A worker's main process serves its metrics on this port (tasklight/metrics.py
# reads it); checked here, so that a bad one stops the worker as it starts
# rather than raising once it is ready. Unset or empty: not served.
WORKER_METRICS_PORT = whole_number("WORKER_METRICS_PORT", None, minimum=1, maximum=65535)
