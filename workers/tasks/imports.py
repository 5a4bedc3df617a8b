"""Import: bring an image into this node's engine, inspect it, keep it.

Each kind of origin has one `Importer` (see IMPORTERS): a registry origin is pulled
(`downloading`); a `docker-file` origin has its context fetched and is built (`building`), its
log written as it goes; a `cycle-upload` origin has its uploaded tar loaded (`uploading`). Then
every import is `verifying` → `saving` → `live`, with a job step for each phase. Pulls and builds
are idempotent: run twice, they leave one image.
"""

from __future__ import annotations

import logging
import re
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from celery import shared_task
from sqlalchemy.orm import Session

from app import vault
from app.archives import ArchiveRefused
from app.config import get_settings
from app.db import utcnow
from app.images import (
    lifecycle,  # noqa: F401  (registers the image job kinds)
    steps,
)
from app.images.imagetar import read_image_tar
from app.images.models import Image, ImageState, engine_tag
from app.jobs import counters
from app.jobs import execution as jobs
from app.jobs.actions import Action
from app.jobs.models import Job
from app.sources.origins import (
    DOCKER_HUB,
    DOCKER_HUB_NAMES,
    CycleUploadOrigin,
    DockerFileDetails,
    DockerFileOrigin,
    DockerHubOrigin,
    DockerRegistryOrigin,
    HttpCredentials,
    OciRegistryOrigin,
    OriginKind,
    RegistryAuthUser,
    Repo,
    SshCredentials,
    UnreadableOrigin,
    docker_hub_only,
    merge_secrets,
    registry_host,
    registry_of,
    stored_origin,
)
from workers.buildlog import BuildLogWriter, open_log
from workers.context import (
    ContextError,
    Packer,
    RepoSpec,
    clean_path,
    clone,
    download,
    pack_archive,
    pack_directory,
    redact,
)
from workers.dockerfile import refuse_remote_sources
from workers.engine import BuildFailed, Engine, EngineError, RegistryAuth
from workers.faults import JobFailed
from workers.netguard import check_host
from workers.progress import BuildSteps, StepProgressWriter
from workers.runner import JobRun, run

DOCKER_HUB_SERVER = "https://index.docker.io/v1/"

log = logging.getLogger("imagejobs.worker")


@shared_task(name=Action.IMAGE_IMPORT.task_name)
def import_image(job_id: str) -> None:
    run(job_id, _import)


@dataclass
class _Plan:
    """What the first write of an import found out: the work the rest of the attempt does."""

    image_id: str
    origin: OriginKind
    override: dict[str, Any]
    build: dict[str, Any]
    upload: str | None = None
    reference: str = ""
    auth: RegistryAuth | None = None
    log_size: int = 0


def _import(job_run: JobRun) -> None:
    plan = _start(job_run)
    try:
        file_id, attrs, config = _bring_in(job_run, plan)
    except JobFailed as exc:
        # A temporary fault is tried again on the same upload, unless this was the last try.
        if not exc.transient or job_run.claim.attempt >= get_settings().max_attempts:
            _forget_upload(plan.upload)
        raise

    with job_run.write() as (session, job):
        image = session.get(Image, plan.image_id, with_for_update=True)
        # Config, size and backend change together, so a failed re-import keeps the old ones.
        image.config = config
        image.size = int(attrs.get("Size") or 0)
        image.backend_provider = "docker"
        image.backend_file_name = ":".join(engine_tag(plan.image_id))
        image.backend_file_id = file_id
        image.factory_node_id = get_settings().node_id
        image.factory_cached = utcnow()
        image.move_to(ImageState.LIVE)
        jobs.complete(session, job, {"image_id": plan.image_id, "file_id": file_id,
                                     "node_id": image.factory_node_id})
    _forget_upload(plan.upload)


def _start(job_run: JobRun) -> _Plan:
    """Move the image into the phase its origin calls for, and plan the rest."""
    with job_run.write() as (session, job):
        upload = job.input.get("upload")
        image = session.get(Image, job.input["image_id"], with_for_update=True)
        if image is None or image.state in (ImageState.DELETING, ImageState.DELETED):
            _forget_upload(upload)
            raise JobFailed("The image was deleted before its import started.")
        try:
            secrets = vault.unseal(image.origin_secrets)
        except vault.UnreadableSecrets as exc:
            raise JobFailed(f"{exc} Save the source's credentials again to seal them with the "
                            "current key.") from None
        plan = _Plan(image.id, read_origin(image.origin, secrets), image.override or {},
                     image.build or {}, upload)
        image.state_error = None
        image.factory_acknowledged = utcnow()
        importer = importer_of(plan.origin)
        image.move_to(importer.first_state)
        importer.prepare(session, image, job_run, job, plan)
    return plan


def _bring_in(job_run: JobRun, plan: _Plan) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Produce the image (pull, build or load), check its config, give it the image's engine tag.

    Until it is checked, a built or loaded image is known only by a name of this attempt's,
    removed at the end: an image that fails its checks leaves no name behind, and the engine
    frees it once nothing else holds it.
    """
    repository, tag = engine_tag(plan.image_id)
    staging = f"{repository}:attempt-{job_run.claim.attempt}"
    dropped: list[str] = []
    with Engine() as engine:
        try:
            file_id = importer_of(plan.origin).produce(job_run, engine, plan, staging, dropped)
            # Reading the config takes an engine call, not a write of its own: the step is
            # recorded, with its real times, by the write before the tag.
            verifying = utcnow()
            attrs = engine.inspect(file_id)
            config = image_config(attrs)
            with job_run.write() as (session, job):
                image = session.get(Image, plan.image_id, with_for_update=True)
                image.move_to(ImageState.VERIFYING)
                image.move_to(ImageState.SAVING)
                job_run.step(job, steps.VERIFY, at=verifying)
                job_run.step(job, steps.SAVE)
            engine.tag(file_id, repository, tag)
        finally:
            # After the tag, or after a failure: either way the names are no longer needed.
            for name in dropped:
                _drop_name(engine, name, plan.image_id)
    return file_id, attrs, config


@dataclass(frozen=True)
class Importer:
    """How images of one kind of origin come into the engine; every import then verifies and
    saves them alike (`_bring_in`).

    `prepare` runs in the import's first write, the image already in `first_state`: it starts the
    job's first step and completes the plan. `produce` makes the engine image and returns its id;
    it adds to `dropped` each name it makes that the image must not keep, as soon as it may
    exist, so a failure leaves none behind.
    """

    first_state: ImageState
    prepare: Callable[[Session, Image, JobRun, Job, _Plan], None]
    produce: Callable[[JobRun, Engine, _Plan, str, list[str]], str]


def _prepare_pull(session: Session, image: Image, job_run: JobRun, job: Job, plan: _Plan) -> None:
    plan.reference, plan.auth = pull_spec(plan.origin, plan.override)
    job_run.step(job, steps.PULL, f"Pulling {plan.reference}")


def _pull(job_run: JobRun, engine: Engine, plan: _Plan, staging: str,
          dropped: list[str]) -> str:
    # Docker Hub is the operator's (its mirror); a target naming another registry is not.
    if not isinstance(plan.origin, DockerHubOrigin) or names_registry(plan.reference):
        _check_registry(plan.reference.split("/", 1)[0])
    with StepProgressWriter(job_run, "bytes") as progress:
        pulled = engine.pull(plan.reference, plan.auth, on_progress=progress.update)
    if pulled.created:  # a name the engine held before the pull belongs to someone else
        dropped.append(pulled.name)
    return pulled.image_id


def _prepare_build(session: Session, image: Image, job_run: JobRun, job: Job,
                   plan: _Plan) -> None:
    plan.log_size = _open_build_log(session, image, job_run.claim.attempt)
    job_run.step(job, steps.FETCH_CONTEXT)


def _produce_build(job_run: JobRun, engine: Engine, plan: _Plan, staging: str,
                   dropped: list[str]) -> str:
    dropped.append(staging)
    return _build(job_run, engine, plan, staging)


def _prepare_load(session: Session, image: Image, job_run: JobRun, job: Job, plan: _Plan) -> None:
    if not plan.upload:
        raise JobFailed("Images of cycle-upload sources are imported by uploading their tar.")
    job_run.step(job, steps.LOAD)


def _load(job_run: JobRun, engine: Engine, plan: _Plan, staging: str, dropped: list[str]) -> str:
    file_id = _load_upload(engine, Path(get_settings().upload_dir) / plan.upload)
    dropped.append(staging)
    engine.tag(file_id, *staging.split(":"))
    return file_id


_PULL = Importer(ImageState.DOWNLOADING, _prepare_pull, _pull)
# By the model an origin reads into (app/sources/origins.py); a kind left out is not imported.
IMPORTERS: dict[type[OriginKind], Importer] = {
    DockerHubOrigin: _PULL,
    DockerRegistryOrigin: _PULL,
    OciRegistryOrigin: _PULL,
    DockerFileOrigin: Importer(ImageState.BUILDING, _prepare_build, _produce_build),
    CycleUploadOrigin: Importer(ImageState.UPLOADING, _prepare_load, _load),
}


def importer_of(origin: OriginKind) -> Importer:
    try:
        return IMPORTERS[type(origin)]
    except KeyError:
        raise JobFailed(f"Images of `{origin.type}` sources cannot be imported.") from None


def read_origin(document: dict[str, Any], secrets: dict[str, str]) -> OriginKind:
    """The image's stored origin, its secrets back in place, as its model; one that cannot be
    read ends the import, saying why."""
    try:
        return stored_origin(merge_secrets(document, secrets))
    except UnreadableOrigin as exc:
        raise JobFailed(str(exc)) from None


def _drop_name(engine: Engine, name: str, image_id: str) -> None:
    """Remove a name an import made (a pull's, or an attempt's own) once it is of no more use.

    Left, it would keep the image in the engine after the image is deleted or pruned (or after a
    failed import, for ever). Failing here costs disk, not the import, so it is logged and the
    job goes on.
    """
    try:
        engine.untag(name)
    except EngineError as exc:
        log.warning("import of %s: could not remove `%s`: %s", image_id, name, exc.message)


def _load_upload(engine: Engine, archive: Path) -> str:
    """Load an uploaded `docker save` tar without the tags it names.

    It is read as the API read it (imagetar): its manifest's tags would otherwise land on this
    engine and could move a tag another image holds; the image is known here only by its id and
    the tag the import gives it. A tar that fails the reading fails for good.
    """
    if not archive.exists():
        raise JobFailed("The uploaded tar is not on this worker's disk: IMAGEJOBS_UPLOAD_DIR "
                        "must be storage the API and the workers share. Upload it again.")
    with tempfile.TemporaryFile(prefix="imagejobs-upload-") as untagged:
        try:
            with open(archive, "rb") as source:
                read_image_tar(source, untagged)
        except ArchiveRefused as exc:
            raise JobFailed(f"The uploaded tar cannot be loaded: {exc.message}") from None
        untagged.seek(0)
        return engine.load(untagged)


def _forget_upload(upload: str | None) -> None:
    """An upload is loaded once: after the job's end it is of no more use."""
    if upload:
        (Path(get_settings().upload_dir) / Path(upload).name).unlink(missing_ok=True)


def names_registry(reference: str) -> bool:
    """Whether a reference starts with a registry host, as the engine reads it (else Docker Hub)."""
    return registry_of(reference) != DOCKER_HUB


def _check_registry(server: str) -> None:
    """A registry a user named is reached only where a user's URL may lead."""
    parts = urlsplit(f"//{server}")
    check_host(parts.hostname or server, parts.port)


def _open_build_log(session, image: Image, attempt: int) -> int:
    header = f"[imagejobs: build attempt {attempt} on node {get_settings().node_id}]\n"
    counters.add(session, counters.BUILD_LOG_BYTES, Action.IMAGE_IMPORT, len(header.encode()))
    return open_log(session, image, attempt, header)


def _build(job_run: JobRun, engine: Engine, plan: _Plan, tag: str) -> str:
    """Fetch and pack the context, then build it under `tag`, its log written as it goes."""
    assert isinstance(plan.origin, DockerFileOrigin)  # the importer table pairs them
    details = plan.origin.details
    with BuildLogWriter(job_run.claim, plan.image_id, already=plan.log_size) as build_log, \
            tempfile.TemporaryDirectory(prefix="imagejobs-build-") as scratch_dir:
        scratch = Path(scratch_dir)
        try:
            context_dir = clean_path(details.context_dir)
            build_file = clean_path(details.build_file, "Dockerfile")
            with open(scratch / "context.tar", "w+b") as packed:
                _fetch_context(details, plan.override, Packer(packed, context_dir, build_file),
                               scratch, build_log)
                # The engine fetches remote ADD sources itself, past every check on users' URLs.
                refuse_remote_sources(_dockerfile_text(packed, build_file))
                with job_run.write() as (_, job):
                    job_run.step(job, steps.BUILD, f"Building {build_file} on node "
                                 f"{get_settings().node_id}")
                for credential in details.credentials or []:
                    server = registry_host(credential.url or "")
                    _check_registry(server)
                    engine.login(RegistryAuth(credential.username or "", credential.token or "",
                                              server))
                # The image's own previous build is the one cache it may use.
                with StepProgressWriter(job_run, "steps") as progress:
                    return engine.build(packed, dockerfile=build_file,
                                        buildargs=dict(plan.build.get("args") or {}), tag=tag,
                                        cache_from=":".join(engine_tag(plan.image_id)),
                                        on_output=_counting_steps(build_log, progress))
        except BuildFailed as exc:
            lines = "\n".join(build_log.last_lines(8))
            raise JobFailed(f"The build failed: {exc.message}\nThe last lines of its log:\n"
                            f"{lines}", transient=exc.transient) from None
        except JobFailed as exc:  # the context refused, a login refused, the engine away
            build_log.append(f"ERROR: {exc.message}\n")
            raise


def _counting_steps(build_log: BuildLogWriter, progress: StepProgressWriter
                    ) -> Callable[[str], None]:
    """What the build prints: into its log, and its Dockerfile steps counted as they start."""
    build_steps = BuildSteps()

    def output(text: str) -> None:
        build_log.append(text)
        if build_steps.feed(text):
            progress.update(build_steps.done, build_steps.total)

    return output


# Far beyond any real Dockerfile; the check reads it whole.
MAX_DOCKERFILE_BYTES = 1024 * 1024


def _dockerfile_text(packed: IO[bytes], build_file: str) -> bytes:
    """The Dockerfile as the engine will read it from the packed context; the file left at 0."""
    packed.seek(0)
    try:
        with tarfile.open(fileobj=packed, mode="r:") as tar:
            data = tar.extractfile(build_file)
            text = data.read(MAX_DOCKERFILE_BYTES + 1) if data else b""
    except KeyError:  # a link to nowhere in the context
        raise ContextError(f"The Dockerfile `/{build_file}` links to no file in the build "
                           "context.") from None
    finally:
        packed.seek(0)
    if data is None:
        raise ContextError(f"The Dockerfile `/{build_file}` is not a file.")
    if len(text) > MAX_DOCKERFILE_BYTES:
        raise ContextError(f"The Dockerfile `/{build_file}` is larger than "
                           f"{MAX_DOCKERFILE_BYTES} bytes.")
    return text


def _fetch_context(details: DockerFileDetails, override: dict[str, Any], packer: Packer,
                   scratch: Path, build_log: BuildLogWriter) -> None:
    url = override.get("targz_url") or details.targz_url
    if url:
        build_log.append(f"Fetching the build context from {redact(url)}\n")
        with open(scratch / "download.tar.gz", "w+b") as archive:
            download(url, archive)
            pack_archive(archive, packer)
    elif details.repo:
        spec = repo_spec(details.repo)
        at = f" at {spec.ref_type} {spec.ref_value}" if spec.ref_type else (
            f" at branch {spec.branch}" if spec.branch else "")
        build_log.append(f"Cloning {redact(spec.url)}{at}\n")
        pack_directory(clone(spec, scratch), packer)
    else:
        raise ContextError("The image source has neither a `repo` nor a `targz_url`, and the "
                           "image no `override.targz_url`: there is nothing to build.")
    build_log.append(f"Build context ready: {len(packer.written)} files, "
                     f"{packer.expanded} bytes\n")


def repo_spec(repo: Repo) -> RepoSpec:
    """What to clone, and with which credentials, from a repo with its secrets in place."""
    credentials: dict[str, str] = {}
    if isinstance(repo.auth, HttpCredentials):
        http = repo.auth.credentials
        credentials = {"username": http.username, "password": http.password}
    elif isinstance(repo.auth, SshCredentials):
        ssh = repo.auth.credentials
        credentials = {"username": ssh.username, "private_key": ssh.private_key,
                       "passphrase": ssh.passphrase}
    return RepoSpec(url=repo.url, branch=repo.branch, ref_type=repo.ref.type if repo.ref else None,
                    ref_value=repo.ref.value if repo.ref else None, **credentials)


def pull_spec(origin: OriginKind, override: dict[str, Any]) -> tuple[str, RegistryAuth | None]:
    """What to pull and with which credentials, from an origin with its secrets in place."""
    if isinstance(origin, DockerHubOrigin):
        hub = origin.details
        target = override.get("target") or hub.target
        auth = None
        if hub.username or hub.token:
            if registry_of(target) not in DOCKER_HUB_NAMES:
                # The engine would send them wherever the target leads.
                raise JobFailed(f"The image cannot be imported: {docker_hub_only(target)}.")
            auth = RegistryAuth(hub.username or "", hub.token or "", DOCKER_HUB_SERVER)
        return target, auth
    assert isinstance(origin, DockerRegistryOrigin | OciRegistryOrigin)  # the table pairs them
    details = origin.details
    target = override.get("target") or details.target
    host = registry_host(details.url)
    target = target.removeprefix(f"{host}/")
    reference = f"{host}/{target}"
    if registry_of(reference) != host.lower():
        # A source made before the API refused such hosts: the pull would go to Docker Hub.
        raise JobFailed(f"The registry `{host}` is read by the Docker engine as a Docker Hub "
                        "account; the source's `url` must give its full domain name or its port.")
    if isinstance(origin, DockerRegistryOrigin):
        registry = origin.details
        secret = registry.password or registry.token
        if registry.username or secret:
            return reference, RegistryAuth(registry.username or "", secret or "", host)
        return reference, None
    registry_auth = origin.details.auth
    if registry_auth is None:
        return reference, None
    if isinstance(registry_auth, RegistryAuthUser):
        user = registry_auth.details
        return reference, RegistryAuth(user.username or "", user.token or "", host)
    raise JobFailed(f"Registry authentication of type `{registry_auth.type}` is not "
                    "supported by this service; use `user` credentials (a username and token).")


def image_config(attrs: dict[str, Any]) -> dict[str, Any]:
    """The spec's image config from the engine's inspect of the image."""
    config = attrs.get("Config") or {}
    ports = []
    for spec in config.get("ExposedPorts") or {}:
        port, _, protocol = spec.partition("/")
        if not (re.fullmatch(r"[0-9]{1,5}", port) and 0 < int(port) < 65536
                and protocol in ("", "tcp", "udp", "sctp")):
            # The engine keeps what a loaded tar says; no container could be run from it.
            raise JobFailed(f"The image's configuration exposes `{spec[:100]}`, which is not a "
                            "port such as `8080/tcp`; the image cannot be used.")
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
