"""The janitor: a Celery worker that keeps storage in step with the metadata database."""
