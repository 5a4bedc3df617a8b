"""The workers: Celery tasks that do the long work of jobs against a Docker engine."""
