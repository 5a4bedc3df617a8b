"""Import: pull an image from a registry into this node's engine, inspect it, keep it.

The image moves `downloading` → `verifying` → `saving` → `live`; the job's task has a step for
each phase. Pulling is idempotent, so an import run twice has the effect of once.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

from app import vault
from app.config import get_settings
from app.db import utcnow
from app.images.models import Image, ImageState
from app.jobs import engine as jobs
from app.sources.origins import merge_secrets, registry_host
from workers.engine import Engine, EngineError, RegistryAuth
from workers.runner import JobFailed, JobRun, run

DOCKER_HUB = "https://index.docker.io/v1/"


@shared_task(name="imagejobs.image.import")
def import_image(job_id: str) -> None:
    run(job_id, _import)


def _import(job_run: JobRun) -> None:
    with job_run.write() as (session, job):
        image = session.get(Image, job.input["image_id"], with_for_update=True)
        if image is None or image.state in (ImageState.DELETING, ImageState.DELETED):
            raise JobFailed("The image was deleted before its import started.")
        origin = merge_secrets(image.origin, vault.unseal(image.origin_secrets))
        reference, auth = pull_spec(origin, image.override or {})
        image.move_to(ImageState.DOWNLOADING)
        image.state_error = None
        image.factory_acknowledged = utcnow()
        job_run.step(job, "Pull", f"Pulling {reference}")
        image_id = image.id

    with Engine() as engine:
        try:
            file_id = engine.pull(reference, auth)
            with job_run.write() as (session, job):
                session.get(Image, image_id, with_for_update=True).move_to(ImageState.VERIFYING)
                job_run.step(job, "Verify", "Reading the image's configuration and size")
            attrs = engine.inspect(file_id)

            with job_run.write() as (session, job):
                session.get(Image, image_id, with_for_update=True).move_to(ImageState.SAVING)
                job_run.step(job, "Save", "Tagging the image in the engine of this node")
            file_name = f"imagejobs/{image_id}:latest"
            engine.tag(file_id, f"imagejobs/{image_id}", "latest")
        except EngineError as exc:
            raise JobFailed(exc.message) from None

    with job_run.write() as (session, job):
        image = session.get(Image, image_id, with_for_update=True)
        # Config, size and backend change together, so a failed re-import keeps the old ones.
        image.config = image_config(attrs)
        image.size = int(attrs.get("Size") or 0)
        image.backend_provider = "docker"
        image.backend_file_name = file_name
        image.backend_file_id = file_id
        image.factory_node_id = get_settings().node_id
        image.factory_cached = utcnow()
        image.move_to(ImageState.LIVE)
        jobs.complete(session, job, {"image_id": image_id, "file_id": file_id,
                                     "node_id": image.factory_node_id})


def pull_spec(origin: dict[str, Any], override: dict[str, Any]) -> tuple[str, RegistryAuth | None]:
    """What to pull and with which credentials, from an origin with its secrets in place."""
    details = origin.get("details") or {}
    target = override.get("target") or details["target"]
    kind = origin["type"]
    if kind == "docker-hub":
        auth = None
        if details.get("username") or details.get("token"):
            auth = RegistryAuth(details.get("username", ""), details.get("token", ""), DOCKER_HUB)
        return target, auth
    host = registry_host(details["url"])
    target = target.removeprefix(f"{host}/")
    reference = f"{host}/{target}"
    if kind == "docker-registry":
        secret = details.get("password") or details.get("token")
        if details.get("username") or secret:
            return reference, RegistryAuth(details.get("username", ""), secret or "", host)
        return reference, None
    registry_auth = details.get("auth")
    if not registry_auth:
        return reference, None
    if registry_auth["type"] == "user":
        values = registry_auth.get("details") or {}
        return reference, RegistryAuth(values.get("username", ""), values.get("token", ""), host)
    raise JobFailed(f"Registry authentication of type `{registry_auth['type']}` is not "
                    "supported by this service; use `user` credentials (a username and token).")


def image_config(attrs: dict[str, Any]) -> dict[str, Any]:
    """The spec's image config from the engine's inspect of the image."""
    config = attrs.get("Config") or {}
    ports = []
    for spec in config.get("ExposedPorts") or {}:
        port, _, protocol = spec.partition("/")
        ports.append({"host": int(port), "container": int(port), "type": protocol or "tcp"})
    ports.sort(key=lambda p: (p["container"], p["type"]))
    env = {}
    for item in config.get("Env") or []:
        name, _, value = item.partition("=")
        env[name] = value
    return {
        "user": config.get("User") or "",
        "ports": ports,
        "env": env,
        "labels": dict(config.get("Labels") or {}),
        "command": list(config.get("Cmd") or []),
        "entrypoint": list(config.get("Entrypoint") or []),
        "volumes": [{"path": path, "mode": "rw"} for path in sorted(config.get("Volumes") or {})],
        "workdir": config.get("WorkingDir") or "",
        "signal_stop": config.get("StopSignal") or "",
    }
