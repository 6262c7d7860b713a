"""A minimal Django project for the django-celery-beat tests (tests/test_celerybeat_django.py)."""

import os

SECRET_KEY = "z4j-tests-only"
INSTALLED_APPS = ["django_celery_beat"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ.get("Z4J_TEST_DJANGO_DB", ":memory:")}}
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
