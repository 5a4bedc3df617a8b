"""The client commands of `imagejobs`: sources, images and jobs through the API, followed to their
end the way `gcloud builds submit` and `docker build` are."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from app.client import settings as client_settings
from app.client.api import Api, ApiError, parse_event
from app.client.follow import follow_job
from app.client.render import Display, display_for, emit_json, table
from app.client.settings import ClientSettings
from app.client.steps import human_bytes, job_error, job_state

ORIGIN_TYPES = ("docker-hub", "docker-registry", "oci-registry", "docker-file", "cycle-upload")
# Exit status when the person stopped following (Ctrl-C), as a shell reports SIGINT.
STOPPED = 130


class Failure(click.ClickException):
    """One line on standard error, exit 1: the API's or the job's own words, no prefix."""

    def show(self, file: Any = None) -> None:
        click.echo(self.format_message(), err=True)


def connect() -> Api:
    """An API client as the environment, else the file `imagejobs login` wrote, says."""
    chosen = client_settings.load()
    missing = chosen.missing()
    if missing:
        raise Failure(f"no {' and no '.join(missing)}: run `imagejobs login`, or set "
                      f"{' and '.join(missing)}")
    return Api(chosen)


json_option = click.option("--json", "json_output", is_flag=True,
                           help="Print the API's documents as JSON (JSON lines when following).")


def follow_option(default: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option("--follow/--no-follow", default=default, show_default=True,
                        help="Follow the job to its end; exit non-zero unless it completed.")


def run_job(api: Api, descriptor: dict[str, Any], follow: bool, json_output: bool,
            display: Display | None = None, build_log_of: str | None = None) -> None:
    """After a job-creating call: its id (or its descriptor in JSON), or the job followed."""
    job_id = descriptor["data"]["job"]["id"]
    display = display or display_for(json_output)
    if json_output:
        emit_json(descriptor)
    if not follow:
        display.close()
        if not json_output:
            click.echo(job_id)
        return
    follow_to_end(api, job_id, display, json_output, build_log_of)


def follow_to_end(api: Api, job_id: str, display: Display, json_output: bool,
                  build_log_of: str | None = None) -> dict[str, Any]:
    """Follow the job; exit 0 once it completed, else with its error (or 130 if stopped)."""
    try:
        outcome = follow_job(api, job_id, display, build_log_of)
    finally:
        display.close()
    job = outcome.job
    if outcome.stopped:
        click.echo(f"stopped following job {job_id}; it goes on (`imagejobs jobs watch "
                   f"{job_id}` follows it again)", err=True)
        sys.exit(STOPPED)
    state = job_state(job)
    if state != "completed":
        raise Failure(f"job {job_id} ended in {state}: {job_error(job) or 'no message'}")
    if not json_output:
        click.echo(f"job {job_id} completed", err=True)
    return job


def build_log_image(job: dict[str, Any]) -> str | None:
    """The image whose build log a job writes: an import whose plan has a Build step."""
    tasks = job.get("tasks") or []
    if not tasks or not any(s.get("caption") == "Build" for s in tasks[0].get("steps") or []):
        return None
    return (tasks[0].get("input") or {}).get("image_id")


# --- login ---------------------------------------------------------------------------------------


@click.command()
@click.option("--api", "api_url", help="The API's address (default: IMAGEJOBS_API, the one saved "
              f"before, or {client_settings.DEFAULT_API}).")
@click.option("--hub", help="The hub's id.")
@click.option("--key", help="The API key (asked for, without echo, when not given).")
def login(api_url: str | None, hub: str | None, key: str | None) -> None:
    """Check an API, hub and key with one call, then save them for later commands (0600)."""
    current = client_settings.load()
    if api_url is None:  # asked for only when the rest is asked for too
        api_url = current.api if hub and key else click.prompt("API", default=current.api,
                                                                err=True)
    api_url = api_url.rstrip("/")
    hub = hub or click.prompt("Hub id", default=current.hub or None, err=True)
    key = key or click.prompt("API key", hide_input=True, err=True)
    chosen = ClientSettings(api=api_url, key=key.strip(), hub=hub.strip())
    try:
        Api(chosen).request("get", "/v1/jobs", params={"page[size]": "1"})
    except ApiError as exc:
        if exc.code != "403.permissions":  # a key allowed less is still this hub's key
            raise
    path = client_settings.config_path()
    client_settings.write(path, chosen)
    click.echo(f"logged in to {chosen.api} as hub {chosen.hub}; saved in {path}", err=True)
    overriding = [v for v in client_settings.ENVIRONMENT.values() if os.environ.get(v)]
    if overriding:
        click.echo(f"{', '.join(overriding)} in the environment still "
                   f"{'wins' if len(overriding) == 1 else 'win'} over the file", err=True)


# --- sources -------------------------------------------------------------------------------------


@click.group()
def sources() -> None:
    """Image sources: where images come from."""


def origin_of(kind: str, url: str | None = None, target: str | None = None,
              username: str | None = None, secret: str | None = None, git: str | None = None,
              branch: str | None = None, targz: str | None = None,
              context_dir: str | None = None, dockerfile: str | None = None) -> dict[str, Any]:
    """The API's origin document of the options given; a UsageError names what is missing or
    does not belong."""
    given = {"--url": url, "--target": target, "--username": username, "--password-stdin": secret,
             "--git": git, "--branch": branch, "--targz": targz, "--context-dir": context_dir,
             "--dockerfile": dockerfile}
    allowed: dict[str, tuple[str, ...]] = {
        "docker-hub": ("--target", "--username", "--password-stdin"),
        "docker-registry": ("--url", "--target", "--username", "--password-stdin"),
        "oci-registry": ("--url", "--target", "--username", "--password-stdin"),
        "docker-file": ("--git", "--branch", "--targz", "--context-dir", "--dockerfile"),
        "cycle-upload": (),
    }
    stray = [name for name, value in given.items() if value and name not in allowed[kind]]
    if stray:
        raise click.UsageError(f"{', '.join(stray)} does not apply to a {kind} origin")
    required = {"docker-hub": ("--target",), "docker-registry": ("--url", "--target"),
                "oci-registry": ("--url", "--target")}.get(kind, ())
    missing = [name for name in required if not given[name]]
    if missing:
        raise click.UsageError(f"a {kind} origin needs {' and '.join(missing)}")
    if kind == "docker-file":
        if bool(git) == bool(targz):
            raise click.UsageError("a docker-file origin needs either --git or --targz")
        if branch and not git:
            raise click.UsageError("--branch goes with --git")
        details: dict[str, Any] = {"targz_url": targz} if targz else {
            "repo": {"url": git, **({"branch": branch} if branch else {})}}
        if context_dir:
            details["context_dir"] = context_dir
        if dockerfile:
            details["build_file"] = dockerfile
        return {"type": kind, "details": details}
    if kind == "cycle-upload":
        return {"type": kind}
    details = {"target": target, **({"url": url} if url else {})}
    if kind == "oci-registry":
        if username or secret:
            details["auth"] = {"type": "user", "details": {"username": username or "",
                                                           "token": secret or ""}}
    else:
        if username:
            details["username"] = username
        if secret:
            details["password" if kind == "docker-registry" else "token"] = secret
    return {"type": kind, "details": details}


def build_context(function: Callable[..., Any]) -> Callable[..., Any]:
    """The options of a docker-file origin: where its context is, and its Dockerfile."""
    for option in reversed((
            click.option("--git", help="A git repository holding the Dockerfile (docker-file)."),
            click.option("--branch", help="The repository's branch."),
            click.option("--targz", help="A .tar.gz build context's URL (docker-file)."),
            click.option("--context-dir",
                         help="The context's folder inside the repository or archive."),
            click.option("--dockerfile",
                         help="The Dockerfile, relative to the context (default Dockerfile)."))):
        function = option(function)
    return function


@sources.command("create")
@click.option("--name", help="The source's name.")
@click.option("--origin", "kind", type=click.Choice(ORIGIN_TYPES), required=True,
              help="Where its images come from.")
@click.option("--url", help="The registry (docker-registry, oci-registry).")
@click.option("--target", help="The image in the registry, e.g. library/busybox:latest.")
@click.option("--username", help="The registry's user name.")
@click.option("--password-stdin", "password_stdin", is_flag=True,
              help="Read the registry's password or token from standard input.")
@build_context
@json_option
def sources_create(name: str | None, kind: str, password_stdin: bool, json_output: bool,
                   **options: str | None) -> None:
    """Create an image source; print its id."""
    secret = sys.stdin.readline().rstrip("\r\n") if password_stdin else None
    document = connect().create_source(name, origin_of(kind, secret=secret, **options))
    if json_output:
        emit_json(document)
    else:
        click.echo(document["data"]["id"])


def listing(function: Callable[..., Any]) -> Callable[..., Any]:
    """The options every list takes: a state to show, how many, JSON."""
    for option in (json_option,
                   click.option("--limit", default=20, show_default=True,
                                help="At most this many, newest first."),
                   click.option("--state", help="Only those in this state (deleted ones show "
                                                "only so).")):
        function = option(function)
    return function


def show_list(path: str, state: str | None, limit: int, json_output: bool,
              headers: tuple[str, ...], row: Callable[[dict[str, Any]], tuple[Any, ...]],
              **filters: str | None) -> None:
    """A page of a list: the API's document in JSON, else one aligned row each."""
    params = {"page[size]": str(limit), **{f"filter[{k}]": v for k, v in filters.items() if v}}
    if state:
        params["filter[state]"] = state
    document = connect().document("get", path, params=params)
    if json_output:
        emit_json(document)
    else:
        table(headers, [row(item) for item in document["data"]])


@sources.command("list")
@listing
def sources_list(state: str | None, limit: int, json_output: bool) -> None:
    """List the hub's image sources."""
    show_list("/v1/images/sources", state, limit, json_output, ("ID", "NAME", "ORIGIN", "STATE"),
              lambda s: (s["id"], s["name"], (s.get("origin") or {}).get("type", ""),
                         s["state"]["current"]))


# --- images --------------------------------------------------------------------------------------


@click.group()
def images() -> None:
    """Images: made from a source, then imported."""


build_args_option = click.option(
    "--build-arg", "build_args", multiple=True, metavar="NAME=VALUE",
    help="A build argument of a Dockerfile build (repeat it).")


def _build_args(pairs: tuple[str, ...]) -> dict[str, str]:
    args = {}
    for pair in pairs:
        name, equals, value = pair.partition("=")
        if not equals or not name:
            raise click.BadParameter(f"`{pair}` is not NAME=VALUE", param_hint="--build-arg")
        args[name] = value
    return args


@images.command("create")
@click.option("--source", "source_id", help="The source's id (for --upload, a cycle-upload "
              "source is made when none is given).")
@click.option("--name", help="The image's name.")
@build_args_option
@click.option("--upload", "upload_file", type=click.Path(exists=True, dir_okay=False,
                                                         path_type=Path),
              help="An image tar (`docker save`) to upload into it at once.")
@follow_option(default=True)
@json_option
def images_create(source_id: str | None, name: str | None, build_args: tuple[str, ...],
                  upload_file: Path | None, follow: bool, json_output: bool) -> None:
    """Create an image of a source; print its id. With --upload, send its tar and follow the
    import; otherwise a cycle-upload image's single-use token is printed on standard error."""
    api = connect()
    if source_id is None:
        if upload_file is None:
            raise click.UsageError("give --source, or --upload with an image tar")
        source_id = api.create_source(name or upload_file.name, {"type": "cycle-upload"})[
            "data"]["id"]
    document = api.create_image(source_id, name, _build_args(build_args))
    image = document["data"]
    token = _upload_token(image)
    if upload_file is None:
        if json_output:
            emit_json(document)
            return
        click.echo(image["id"])
        if token:
            click.echo(f"upload token (shown once): {token}\nsend the tar with `imagejobs upload "
                       f"{image['id']} FILE --token TOKEN`", err=True)
        return
    if not token:
        raise Failure(f"image {image['id']} was made, but its source is not a cycle-upload "
                      "source: nothing can be uploaded into it")
    if not json_output:
        click.echo(f"image {image['id']}", err=True)
    send_upload(api, image["id"], token, upload_file, follow, json_output)


def _upload_token(image: dict[str, Any]) -> str:
    origin = ((image.get("source") or {}).get("details") or {}).get("origin") or {}
    if origin.get("type") != "cycle-upload":
        return ""
    return str((origin.get("details") or {}).get("token") or "")


def send_upload(api: Api, image_id: str, token: str, path: Path, follow: bool,
                json_output: bool) -> None:
    display = display_for(json_output)
    try:
        descriptor = api.upload(image_id, token, path, display.sent)
    except BaseException:
        display.close()
        raise
    run_job(api, descriptor, follow, json_output, display)


@images.command("list")
@click.option("--source", "source_id", help="Only the images of this source.")
@listing
def images_list(source_id: str | None, state: str | None, limit: int, json_output: bool) -> None:
    """List the hub's images."""
    show_list("/v1/images", state, limit, json_output, ("ID", "NAME", "STATE", "SIZE", "SOURCE"),
              lambda i: (i["id"], i["name"], i["state"]["current"],
                         human_bytes(i.get("size") or 0), i["source"]["details"]["id"]),
              source_id=source_id)


@click.command("import")
@click.argument("image_id", metavar="IMAGE")
@follow_option(default=False)
@json_option
def import_(image_id: str, follow: bool, json_output: bool) -> None:
    """Import an image: pull, build or load it (a job). Print the job's id, or follow it."""
    api = connect()
    descriptor = api.import_image(image_id)
    run_job(api, descriptor, follow, json_output,
            build_log_of=build_log_image(descriptor["data"]["job"]))


@click.command()
@build_context
@click.option("--name", help="The name of the source and the image.")
@build_args_option
@follow_option(default=True)
@json_option
def build(git: str | None, branch: str | None, targz: str | None, context_dir: str | None,
          dockerfile: str | None, name: str | None, build_args: tuple[str, ...], follow: bool,
          json_output: bool) -> None:
    """Build an image from a Dockerfile: make a docker-file source, an image and its import,
    then follow the build, its log as it is printed; exit with the build's result."""
    origin = origin_of("docker-file", git=git, branch=branch, targz=targz,
                       context_dir=context_dir, dockerfile=dockerfile)
    api = connect()
    source = api.create_source(name or _name_of(git or targz or "build"), origin)
    image = api.create_image(source["data"]["id"], name, _build_args(build_args))
    descriptor = api.import_image(image["data"]["id"])
    if json_output:
        emit_json(source)
        emit_json(image)
    else:
        click.echo(f"source {source['data']['id']}, image {image['data']['id']}", err=True)
    run_job(api, descriptor, follow, json_output, build_log_of=image["data"]["id"])


def _name_of(url: str) -> str:
    """`https://host/team/app.git` → `app`: a name for what was made from it."""
    last = url.rstrip("/").rsplit("/", 1)[-1]
    for suffix in (".git", ".tar.gz", ".tgz"):
        last = last.removesuffix(suffix)
    return last[:64] or "build"


@click.command()
@click.argument("image_id", metavar="IMAGE")
@click.argument("path", metavar="FILE", type=click.Path(exists=True, dir_okay=False,
                                                         path_type=Path))
@click.option("--token", envvar="IMAGEJOBS_UPLOAD_TOKEN", required=True,
              help="The image's single-use upload token, shown when it was created "
                   "(or IMAGEJOBS_UPLOAD_TOKEN).")
@follow_option(default=True)
@json_option
def upload(image_id: str, path: Path, token: str, follow: bool, json_output: bool) -> None:
    """Upload an image tar (`docker save`) into a cycle-upload image, then follow its import."""
    send_upload(connect(), image_id, token, path, follow, json_output)


@click.command()
@click.argument("image_id", metavar="IMAGE")
@follow_option(default=False)
@json_option
def delete(image_id: str, follow: bool, json_output: bool) -> None:
    """Delete an image from the node holding it (a job)."""
    api = connect()
    run_job(api, api.delete_image(image_id), follow, json_output)


@click.command()
@click.option("--source", "source_ids", multiple=True, required=True,
              help="A source whose images go (repeat it).")
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
@follow_option(default=True)
@json_option
def prune(source_ids: tuple[str, ...], dry_run: bool, follow: bool, json_output: bool) -> None:
    """Delete the images of sources (a job); print what became of each."""
    api = connect()
    descriptor = api.prune(list(source_ids), dry_run)
    if not follow:
        run_job(api, descriptor, follow, json_output)
        return
    display = display_for(json_output)
    if json_output:
        emit_json(descriptor)
    job = follow_to_end(api, descriptor["data"]["job"]["id"], display, json_output)
    if not json_output:
        for image_id, result in ((job.get("tasks") or [{}])[0].get("output") or {}).items():
            click.echo(f"{image_id}: {result}")


@click.command()
@click.argument("image_id", metavar="IMAGE")
@click.option("--follow", is_flag=True, help="Go on printing the log as the build prints it.")
@json_option
def logs(image_id: str, follow: bool, json_output: bool) -> None:
    """Print an image's build log."""
    api = connect()
    if not follow:
        document = api.document("get", f"/v1/images/{image_id}/build-log")
        if json_output:
            emit_json(document)
        else:
            click.echo(document["data"]["log"], nl=False)
        return
    for event in api.build_log_events(image_id):
        data = parse_event(event)
        if json_output:
            emit_json(data)  # `{"offset", "text"}`, then the end's `{"state"}`
        elif event.event != "end":
            click.echo(data.get("text", ""), nl=False)
        if event.event == "end":
            return


# --- jobs ----------------------------------------------------------------------------------------


@click.group()
def jobs() -> None:
    """Jobs: the long work on images, followed to their end."""


@jobs.command("list")
@listing
def jobs_list(state: str | None, limit: int, json_output: bool) -> None:
    """List the hub's jobs, newest first."""
    show_list("/v1/jobs", state, limit, json_output, ("ID", "STATE", "CAPTION", "QUEUED", "ERROR"),
              lambda j: (j["id"], j["state"]["current"], j["caption"], j["events"]["queued"],
                         (job_error(j).splitlines() or [""])[0][:60]))


@jobs.command("watch")
@click.argument("job_id", metavar="JOB")
@json_option
def jobs_watch(job_id: str, json_output: bool) -> None:
    """Follow a job to its end (a build's log too); exit non-zero unless it completed."""
    api = connect()
    first = api.document("get", f"/v1/jobs/{job_id}")["data"]
    follow_to_end(api, job_id, display_for(json_output), json_output, build_log_image(first))


COMMANDS = (login, sources, images, import_, build, upload, delete, prune, logs, jobs)
