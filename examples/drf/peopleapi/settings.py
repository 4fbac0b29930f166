"""
Settings for the Portcullis DRF example. Everything that differs between a test run, a
container and production comes from the environment:

  DRF_JWT_SIGNING_KEY        required: the HS256 key simplejwt signs with (the gateway verifies
                             with the same key)
  DRF_JWT_ISSUER             the `iss` claim put in (and required of) every token, default
                             "people-drf"; empty = none (simplejwt's default, not recommended:
                             then any token signed with the key verifies, e.g. another issuer's)
  DRF_JWT_AUDIENCE           optional `aud` claim put in (and required of) tokens
  DRF_ACCESS_TOKEN_LIFETIME  seconds, default 300
  DRF_REFRESH_TOKEN_LIFETIME seconds, default 86400
  DRF_DATA_DIR               folder for the SQLite database, default
                             ${XDG_STATE_HOME:-~/.local/state}/portcullis-drf (per user)
  DRF_PAGE_SIZE              page size of list responses, default 10
  DJANGO_SECRET_KEY          default: derived from DRF_JWT_SIGNING_KEY (no sessions are used)
  DJANGO_ALLOWED_HOSTS       comma-separated, default localhost,127.0.0.1,[::1]
  DJANGO_DEBUG               "1" for debug pages (never in production)
  GATEWAY_TRUSTED_ADDRESSES  comma-separated IPs/CIDRs whose identity headers are believed,
                             default 127.0.0.1,::1; empty = never believe them
  GATEWAY_USER_HEADER, GATEWAY_SCOPES_HEADER, GATEWAY_VIA_HEADER
                             default X-Authenticated-User, X-Authenticated-Scopes,
                             X-Authenticated-Via
"""
import hashlib
import os
from datetime import timedelta
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured


def env_list(name, default):
    return [v.strip() for v in os.environ.get(name, default).split(",") if v.strip()]


SIGNING_KEY = os.environ.get("DRF_JWT_SIGNING_KEY", "")
if len(SIGNING_KEY) < 32:
    raise ImproperlyConfigured("DRF_JWT_SIGNING_KEY must be set to a secret of at least 32 characters")

# .env.example's placeholders all start with "replace-me": a copy left unedited must not serve.
PLACEHOLDER_PREFIX = "replace-me"
for _name in ("DRF_JWT_SIGNING_KEY", "DJANGO_SECRET_KEY"):
    if os.environ.get(_name, "").startswith(PLACEHOLDER_PREFIX):
        raise ImproperlyConfigured(f"{_name} is the published placeholder from .env.example; set your own secret (openssl rand -base64 48)")

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or hashlib.sha256(b"django-secret-key\0" + SIGNING_KEY.encode()).hexdigest()
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")

# Behind the gateway: the Host the client used arrives as X-Forwarded-Host (so pagination links
# and redirects point at the gateway), and X-Forwarded-Proto says whether the client used https.
# The gateway always sets both itself (client-sent values are replaced), so they can be believed.
USE_X_FORWARDED_HOST = True
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
APPEND_SLASH = True

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "rest_framework",
    "people",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
]

ROOT_URLCONF = "peopleapi.urls"
WSGI_APPLICATION = "peopleapi.wsgi.application"

DATA_DIR = Path(os.environ.get("DRF_DATA_DIR") or Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "portcullis-drf")
DATA_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(DATA_DIR / "db.sqlite3"),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "peopleapi.auth.GatewayIdentityAuthentication",
        "rest_framework_simplejwt.authentication.JWTAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PAGINATION_CLASS": "people.pagination.PeoplePagination",
    "PAGE_SIZE": int(os.environ.get("DRF_PAGE_SIZE", "10")),
}

SIMPLE_JWT = {
    "ALGORITHM": "HS256",
    "SIGNING_KEY": SIGNING_KEY,
    # Tokens whose iss is not this one (the gateway's own, "portcullis") are refused, even if an
    # operator signs both with the same key.
    "ISSUER": os.environ.get("DRF_JWT_ISSUER", "people-drf") or None,
    "AUDIENCE": os.environ.get("DRF_JWT_AUDIENCE") or None,
    "ACCESS_TOKEN_LIFETIME": timedelta(seconds=int(os.environ.get("DRF_ACCESS_TOKEN_LIFETIME", "300"))),
    "REFRESH_TOKEN_LIFETIME": timedelta(seconds=int(os.environ.get("DRF_REFRESH_TOKEN_LIFETIME", "86400"))),
    "AUTH_HEADER_TYPES": ("Bearer",),
    "UPDATE_LAST_LOGIN": False,
}

GATEWAY_IDENTITY = {
    "TRUSTED_ADDRESSES": env_list("GATEWAY_TRUSTED_ADDRESSES", "127.0.0.1,::1"),
    "USER_HEADER": os.environ.get("GATEWAY_USER_HEADER", "X-Authenticated-User"),
    "SCOPES_HEADER": os.environ.get("GATEWAY_SCOPES_HEADER", "X-Authenticated-Scopes"),
    "VIA_HEADER": os.environ.get("GATEWAY_VIA_HEADER", "X-Authenticated-Via"),
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
