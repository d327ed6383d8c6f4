"""Suanli settings: one module, every value from the environment.

Embedded defaults (nothing set) give a working laptop install: a SQLite file, the in-memory channel layer
and background jobs run in-process. Production sets SUANLI_ENV=production, SECRET_KEY, ALLOWED_HOSTS,
DATABASE_URL (PostgreSQL) and REDIS_URL (channel layer and Celery broker).
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


PRODUCTION = os.environ.get("SUANLI_ENV", "development").strip().lower() == "production"
DEBUG = env_bool("DEBUG", default=False)
if PRODUCTION and DEBUG:
    raise ImproperlyConfigured("DEBUG must be off when SUANLI_ENV=production")

_DEV_SECRET_KEY = "suanli-dev-only-not-secret-8c1f3e6a9b2d4f7e0a5c8b1d3e6f9a2c4b7d0e3f6a9c2b5"  # nosec B105 # development only: production refuses to start without SECRET_KEY
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if PRODUCTION:
        raise ImproperlyConfigured("SECRET_KEY must be set when SUANLI_ENV=production")
    SECRET_KEY = _DEV_SECRET_KEY

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1],testserver")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

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
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "common",
    "marketplace",
    "ledger",
    "exchange",
    "metering",
    "vouchers",
    "oversight",
    "scheduling",
    "portal",
    "apikeys",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "common.middleware.LazyMessageMiddleware",  # Django's, its storage made only when used
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.i18n",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "portal.context.portal",
            ],
        },
    },
]

# --- Database: SQLite file by default, PostgreSQL (psycopg 3) from DATABASE_URL.
DATABASE_URL = os.environ.get("DATABASE_URL", "")
SQLITE_PATH = Path(os.environ.get("SUANLI_SQLITE_PATH", BASE_DIR / "db.sqlite3"))
if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_health_checks=True)}
    # A connection pool per process (psycopg_pool): a request borrows a connection and gives it back when it
    # ends; each borrowed connection is checked first, so a restarted server costs no failed request. Not
    # persistent per-thread connections (CONN_MAX_AGE): under ASGI Django runs each request's sync code in
    # a thread of its own, so they piled up, one per thread, until a shared server refused connections
    # (bench/soak_bench.py: 79 connections at 40 concurrent requests; with the pool, 20).
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": env_int("DATABASE_POOL_MIN", 2),
        "max_size": env_int("DATABASE_POOL_MAX", 20),
        "timeout": env_int("DATABASE_POOL_TIMEOUT", 30),
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": SQLITE_PATH,
            # A generous busy timeout: the matcher, web requests and in-process jobs share one file.
            "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE"},
        }
    }
# The matcher's batch binds its statements on the server and prepares them (common.db.prepared_statements);
# 0 for a connection pooler that cannot keep prepared statements (PgBouncer in transaction mode before 1.21).
DATABASE_PREPARED_STATEMENTS = env_bool("DATABASE_PREPARED_STATEMENTS", default=True)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "marketplace.User"

# --- Channel layer and background jobs: Redis from REDIS_URL, else in-memory and in-process.
REDIS_URL = os.environ.get("REDIS_URL", "")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # A read timeout above channels_redis's 5 s blocking receive: redis-py 8's default socket timeout is
            # 5 s too, so an idle receive timed out client-side and closed every user socket after 5 s without events.
            "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": 15}], "prefix": os.environ.get("CHANNEL_PREFIX", "suanli")},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", REDIS_URL or "memory://")
CELERY_RESULT_BACKEND = None
# Embedded default: tasks run in-process at the call site (and the periodic schedule runs inside the server).
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", default=not bool(os.environ.get("CELERY_BROKER_URL") or REDIS_URL))
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Redis broker: a task a worker took but never acknowledged (it died mid-task; acks are late) is handed out
# again after this many seconds. Every task is idempotent, so a second run is safe (docs/security.md, drills).
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": int(os.environ.get("CELERY_VISIBILITY_TIMEOUT", "3600"))}
CELERY_TIMEZONE = "Asia/Shanghai"
# Periodic jobs: (dotted task name, interval in seconds). Celery beat uses it in production; the embedded
# server runs the same list on a background thread (config/scheduler.py).
PERIODIC_TASKS = {
    "marketplace.tasks.instruments_roll": 60,
    "metering.tasks.deliveries_settle_due": 60,
    "oversight.tasks.audit_ingest": 60,
    "oversight.tasks.surveillance_scan": 300,
    "vouchers.tasks.redemptions_commit_new": 60,
    "vouchers.tasks.vouchers_expire_due": 3600,
}
# Metering: usage is accepted (and buyers may dispute) until a contract's window end plus this grace; then
# it settles. Usage ending more than the skew in the future is refused.
METERING_GRACE_SECONDS = int(os.environ.get("METERING_GRACE_SECONDS", str(6 * 3600)))
METERING_CLOCK_SKEW_SECONDS = int(os.environ.get("METERING_CLOCK_SKEW_SECONDS", "300"))
# Audit checkpoints are signed with HMAC-SHA256 under this key; empty: derived from SECRET_KEY (embedded).
AUDIT_SIGNING_KEY = os.environ.get("AUDIT_SIGNING_KEY", "")
# The audit job moves its per-source cursor only past rows older than this (late commits with lower ids).
AUDIT_INGEST_LAG_SECONDS = int(os.environ.get("AUDIT_INGEST_LAG_SECONDS", "60"))
EMBEDDED_SCHEDULER = env_bool("SUANLI_EMBEDDED_SCHEDULER", default=CELERY_TASK_ALWAYS_EAGER)

# The matcher (exchange/transport.py): "thread" runs it inside the server (embedded default), "redis" sends
# commands to `manage.py runmatcher --shard K --shards N` processes, "inline" runs it in the caller (tests).
MATCHER_TRANSPORT = os.environ.get("MATCHER_TRANSPORT", "redis" if REDIS_URL and not CELERY_TASK_ALWAYS_EAGER else "thread")
MATCHER_SHARDS = int(os.environ.get("MATCHER_SHARDS", "1"))
MATCHER_REPLY_TIMEOUT = float(os.environ.get("MATCHER_REPLY_TIMEOUT", "2.0"))  # seconds an API call waits
MATCHER_HOUSEKEEPING_SECONDS = float(os.environ.get("MATCHER_HOUSEKEEPING_SECONDS", "1.0"))
# Each matcher logs its load (commands, batches, busy share, batch times) this often; 0: never (README, scaling).
MATCHER_LOAD_LOG_SECONDS = float(os.environ.get("MATCHER_LOAD_LOG_SECONDS", "60"))

# Websockets: heartbeat interval on market sockets; how many frames a slow socket may have queued before
# it is closed (4008) rather than slowing everyone else.
WS_HEARTBEAT_SECONDS = float(os.environ.get("WS_HEARTBEAT_SECONDS", "15"))
WS_MAX_OUTBOX = int(os.environ.get("WS_MAX_OUTBOX", "1000"))

CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "common.cache.RedisCache",
            "LOCATION": REDIS_URL,
            # One pool per process (Django builds one per backend object, i.e. per ASGI request) and one client
            # per pool (Django builds one per call): common/cache.py
            "OPTIONS": {"pool_class": "common.cache.SharedConnectionPool"},
        }
    }

# Seconds an API token's user is kept in the cache (marketplace.authentication; 0: read per request). Token and
# user changes through the ORM are forgotten at once; changes made outside it show within this time.
AUTH_TOKEN_CACHE_SECONDS = env_int("AUTH_TOKEN_CACHE_SECONDS", 60)

# Tests only (tests/conftest.py sets it, and the servers and workers tests start inherit it): a password
# costs 0.3 s of PBKDF2 here, and the suite creates thousands of users. Refused in production.
if env_bool("SUANLI_TEST_FAST_PASSWORDS"):
    if PRODUCTION:
        raise ImproperlyConfigured("SUANLI_TEST_FAST_PASSWORDS is for tests; production hashes with PBKDF2.")
    PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher", "django.contrib.auth.hashers.PBKDF2PasswordHasher"]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en"
# The portal: sign-in page and where signing in and out lead.
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/"
LANGUAGES = [("zh-hans", "简体中文"), ("en", "English")]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = "Asia/Shanghai"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if PRODUCTION
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
# Outside production whitenoise serves straight from the finders, so no collectstatic step is needed.
WHITENOISE_USE_FINDERS = not PRODUCTION
if not PRODUCTION:
    # whitenoise warns at start-up when STATIC_ROOT is missing, even though it serves from the finders here.
    STATIC_ROOT.mkdir(exist_ok=True)
WHITENOISE_AUTOREFRESH = DEBUG

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "marketplace.authentication.TokenAuthentication",  # DRF's, its lookup one constant statement
        "apikeys.authentication.ApiKeyAuthentication",  # Api-Key / Bearer sl_...; scopes checked per view
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticatedOrReadOnly"],
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.OrderingFilter",
    ],
    "DEFAULT_PAGINATION_CLASS": "common.api.Pagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "common.schema.AutoSchema",  # documents the error answers too
    "COERCE_DECIMAL_TO_STRING": True,
    "EXCEPTION_HANDLER": "common.api.exception_handler",
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "common.negotiation.ContentNegotiation",  # DRF's, with a short way for JSON clients
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
    "DEFAULT_THROTTLE_RATES": {"orders": os.environ.get("ORDER_RATE_LIMIT", "50/s")},
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Suanli compute exchange API",
    "DESCRIPTION": "Catalogue, inventory and trading of computing power in standard units.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "MetroEnum": "marketplace.regions.Metro",
        "RegionEnum": "marketplace.regions.Region",
        "ChipClassEnum": "marketplace.models.ChipClass",
        "ComputeUnitEnum": "marketplace.units.ComputeUnit",
        "OrderSideEnum": "exchange.models.Side",
        "AlertStatusEnum": "oversight.models.AlertStatus",
        "ContractStatusEnum": "exchange.models.ContractStatus",
        "OrderStatusEnum": "exchange.models.OrderStatus",
        "SizeClassEnum": "marketplace.models.SizeClass",
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# --- Payments. Stripe is on only when STRIPE_SECRET_KEY is set; otherwise top-ups and payouts go by bank
# transfer confirmed by an operator (the offline provider). The server says which, once, at start-up.
STRIPE_SECRET_KEY = os.environ.get("STRIPE_SECRET_KEY", "")  # empty: the offline provider is used
STRIPE_WEBHOOK_SECRET = os.environ.get("STRIPE_WEBHOOK_SECRET", "")  # empty: Stripe webhooks are refused
STRIPE_API_BASE = os.environ.get("STRIPE_API_BASE", "")  # empty: Stripe's own (tests point it at a local server)
STRIPE_CHECKOUT_SUCCESS_URL = os.environ.get("STRIPE_CHECKOUT_SUCCESS_URL", "http://127.0.0.1:8000/?top_up=success")
STRIPE_CHECKOUT_CANCEL_URL = os.environ.get("STRIPE_CHECKOUT_CANCEL_URL", "http://127.0.0.1:8000/?top_up=cancelled")
STRIPE_WEBHOOK_TOLERANCE = int(os.environ.get("STRIPE_WEBHOOK_TOLERANCE", "300"))  # seconds a signature stays valid
STRIPE_MAX_NETWORK_RETRIES = int(os.environ.get("STRIPE_MAX_NETWORK_RETRIES", "2"))  # safe: every POST has an idempotency key

# --- Production hardening: `manage.py check --deploy` reports nothing in this mode.
if PRODUCTION:
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", default=True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = int(os.environ.get("SECURE_HSTS_SECONDS", "31536000"))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_REFERRER_POLICY = "same-origin"
    X_FRAME_OPTIONS = "DENY"

