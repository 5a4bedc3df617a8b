"""/ui/: a page that watches a hub's images, sources and jobs live; /docs: the OpenAPI document
rendered by Swagger UI. Both are static files served from the package, outside /v1 and its
document.

The page holds no data of its own: it calls the API from the browser with the key the person
pastes (kept in the tab's sessionStorage), so serving it needs no authentication. Every answer
carries a Content-Security-Policy that lets the page load and call only this origin and run no
inline script, so nothing a hub stored can run as code in it, and no request leaves for
another site.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from flask import Blueprint, Response, send_from_directory

blueprint = Blueprint("ui", __name__)

STATIC = Path(__file__).resolve().parent / "static"
# Swagger UI's files as released (its LICENSE beside them), from the flask-swagger-ui wheel: only
# its files are used, not its blueprint, whose page runs an inline script.
SWAGGER_UI = Path(str(files("flask_swagger_ui") / "dist"))

CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    # Swagger UI's stylesheet draws its icons from data: URLs.
    "img-src 'self' data:",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
))


@blueprint.after_request
def _guarded(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    # A new release's page and scripts are taken at once, never a stale mix of the two.
    response.headers["Cache-Control"] = "no-cache"
    return response


@blueprint.get("/ui/")
def page() -> Response:
    return send_from_directory(STATIC, "index.html")


@blueprint.get("/ui/<path:name>")
def page_file(name: str) -> Response:
    return send_from_directory(STATIC, name)


@blueprint.get("/docs")
def docs() -> Response:
    return send_from_directory(STATIC, "docs.html")


@blueprint.get("/docs/<path:name>")
def docs_file(name: str) -> Response:
    """Swagger UI's own files, and the script that starts it on this API's document."""
    if name == "docs.js":
        return send_from_directory(STATIC, name)
    return send_from_directory(SWAGGER_UI, name)
