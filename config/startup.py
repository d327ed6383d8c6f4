"""What a starting process says about itself."""

from django.conf import settings


def describe_backends() -> str:
    """The one start-up line that says which database, channel layer and job runner are in use."""
    db = settings.DATABASES["default"]
    if "sqlite" in db["ENGINE"]:
        db_text = f"SQLite file {db['NAME']}"
    else:
        db_text = f"PostgreSQL {db.get('HOST') or 'local socket'}:{db.get('PORT') or 5432}/{db.get('NAME')}"
    layer = "Redis channel layer" if settings.REDIS_URL else "in-memory channel layer"
    if settings.CELERY_TASK_ALWAYS_EAGER:
        jobs = "in-process background jobs"
    else:
        jobs = f"Celery broker {settings.CELERY_BROKER_URL.split('@')[-1]}"
    if settings.PRODUCTION:
        mode = "production"
    elif settings.DATABASE_URL or settings.REDIS_URL:
        mode = "development"
    else:
        mode = "embedded"
    return f"Suanli ({mode}): database {db_text}; {layer}; {jobs}"
