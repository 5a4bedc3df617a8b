"""imagejobs: the Images part of the Cycle.io platform API."""

from __future__ import annotations

from flask import Flask

from app.config import Settings, check_service, use_settings


def create_app(settings: Settings | None = None) -> Flask:
    """The Flask application: one blueprint per resource, errors always in the spec's envelope.

    `settings` become the process's own; without them they are read from the environment."""
    from app import logs, metrics, web
    from app.events.views import blueprint as notifications
    from app.images import lifecycle as _images  # noqa: F401  (job kinds, for retry and cancel)
    from app.images.views import blueprint as images
    from app.jobs.views import blueprint as jobs
    from app.openapi import blueprint as openapi
    from app.openapi import documented
    from app.ready import Health, HealthDocument
    from app.ready import blueprint as ready
    from app.sources import lifecycle as _sources  # noqa: F401  (job kinds)
    from app.sources.views import blueprint as sources
    from app.ui.views import blueprint as ui

    settings = use_settings(settings)
    check_service(settings, worker=False)
    logs.configure()
    app = Flask(__name__)
    app.wsgi_app = logs.with_request_ids(app.wsgi_app)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    # OPTIONS would otherwise be answered by Flask with an empty HTML page.
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    app.json.sort_keys = False
    app.url_map.converters["image_id"] = web.ImageIdConverter
    web.register(app)
    # GET /metrics, and every request's latency by route and status.
    metrics.register(app)
    # Sources before images: /v1/images/sources must not be taken for an image id.
    app.register_blueprint(sources)
    app.register_blueprint(images)
    app.register_blueprint(jobs)
    app.register_blueprint(notifications)
    app.register_blueprint(openapi)
    app.register_blueprint(ready)
    # The web page and the API's documentation, outside /v1 and its OpenAPI document.
    app.register_blueprint(ui)

    @app.get("/v1/health")
    @documented("Whether the API answers", HealthDocument)
    def health():
        return HealthDocument(data=Health(status="ok"))

    return app
