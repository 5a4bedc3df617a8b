"""The `imagejobs` command: database, hubs and keys, the API and worker processes, and the client
commands that work through the API (app/client)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import sqlalchemy.exc

from app.client.api import ClientError
from app.client.commands import COMMANDS as CLIENT_COMMANDS
from app.client.commands import Failure
from app.client.settings import SettingsError
from app.config import (
    ConfigError,
    Settings,
    check_service,
    get_settings,
    new_secret_key,
    redact_url,
    use_settings,
    write_key_file,
)
from app.jobs.queueing import SHARED_QUEUES, node_queue

# Where `imagejobs dev` keeps the key it makes when none is configured.
DEV_KEY_FILE = Path.home() / ".local/share/imagejobs/secret.key"


class _Commands(click.Group):
    def invoke(self, ctx: click.Context) -> object:
        # A setting that cannot be used, or a database out of reach, is a line, not a traceback.
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None
        except (ClientError, SettingsError) as exc:
            raise Failure(str(exc)) from None
        except sqlalchemy.exc.OperationalError as exc:
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else "no answer"
            raise click.ClickException(f"cannot use the database at "
                                       f"{redact_url(get_settings().database_url)}: {reason}"
                                       ) from None


@click.group(cls=_Commands)
def main() -> None:
    """imagejobs: container-image jobs behind the Cycle.io Images API."""


for _command in CLIENT_COMMANDS:
    main.add_command(_command)


@main.group()
def db() -> None:
    """The database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Create the database if it is missing and migrate it."""
    from app import migrations

    if migrations.create_database_if_missing():
        click.echo("created the database")
    migrations.upgrade(revision)
    click.echo(f"database at {revision}")


@main.group()
def hub() -> None:
    """Hubs (tenants)."""


@hub.command("create")
@click.argument("name")
def hub_create(name: str) -> None:
    """Create a hub and print its id."""
    from app.db import transaction
    from app.hubs.services import create_hub

    with transaction() as session:
        click.echo(create_hub(session, name).id)


@main.group()
def key() -> None:
    """API keys."""


@key.command("create")
@click.option("--hub", "hub_id", required=True, help="The hub the key belongs to.")
@click.option("--name", default="api key", show_default=True)
@click.option("--capability", "capabilities", multiple=True,
              help="A capability to grant (repeat it); none means all.")
def key_create(hub_id: str, name: str, capabilities: tuple[str, ...]) -> None:
    """Create an API key and print its secret, which is shown only this once."""
    from app.db import transaction
    from app.hubs.models import Capability
    from app.hubs.services import create_key

    known = {c.value for c in Capability}
    unknown = [c for c in capabilities if c not in known]
    if unknown:
        raise click.BadParameter(f"unknown capability {unknown[0]}; choose from "
                                 f"{', '.join(sorted(known))}", param_hint="--capability")
    try:
        with transaction() as session:
            _, secret = create_key(session, hub_id, name, capabilities)
    except LookupError:
        raise click.BadParameter(f"no hub {hub_id}", param_hint="--hub") from None
    click.echo(secret)


def default_queues() -> str:
    return ",".join([*SHARED_QUEUES, node_queue(get_settings().node_id)])


def api_command(host: str, port: int, workers: int, connections: int = 1000,
                keep_alive: int = 30) -> list[str]:
    """gunicorn with our gevent worker (app/serve.py): a connection costs a greenlet, not a thread,
    so clients sending slowly or not at all cannot take every request's place."""
    return [sys.executable, "-m", "gunicorn", "--bind", f"{host}:{port}", "--workers",
            str(workers), "--worker-class", "app.serve.ApiWorker",
            "--worker-connections", str(connections), "--access-logfile",
            # The path without its query: upload tokens travel there and must not be logged.
            "-", "--access-logformat", '%(h)s %(t)s "%(m)s %(U)s" %(s)s %(b)s %(L)ss',
            # Idle connections stay open longer than a polling client waits between calls;
            # at gunicorn's default of 2 s a reused connection races its own closing. It is
            # also all the time a client gets to send a request's headers, and a JSON body.
            "--keep-alive", str(keep_alive), "--graceful-timeout", "20",
            # gunicorn's largest request line: filters of non-ASCII text grow threefold when
            # percent-encoded; a longer line is answered 414 by gunicorn (in the envelope).
            "--limit-request-line", "8190",
            # Its hooks give each start a fresh folder for the workers' request metrics.
            "--config", "python:app.gunicorn_hooks",
            *_json_logs("--logger-class", "app.logs.GunicornLogger"),
            "app.wsgi:app"]


def _json_logs(*args: str) -> tuple[str, ...]:
    """`args` when the log format is JSON, else nothing."""
    return args if get_settings().log_format == "json" else ()


def worker_environment() -> dict[str, str]:
    """SIGTERM as Celery's cold shutdown: running tasks get IMAGEJOBS_SHUTDOWN_SECONDS, then stop.

    A plain warm shutdown would wait for the longest build, however long it takes.
    """
    return {**os.environ, "REMAP_SIGTERM": "SIGQUIT"}


def worker_command(queues: str, concurrency: int) -> list[str]:
    # Celery prints its banner, not logs it: with JSON logs, the only lines that would not be JSON.
    return [sys.executable, "-m", "celery", "-A", "workers.celery_app", *_json_logs("--quiet"),
            "worker",
            "--queues", queues, "--concurrency", str(concurrency), "--loglevel", "INFO",
            # Workers coordinate through Postgres; Celery's worker-to-worker chatter adds nothing.
            "--without-mingle", "--without-gossip",
            "--hostname", f"imagejobs@{get_settings().node_id}-%h-{os.getpid()}"]


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True)
@click.option("--workers", default=2, show_default=True, help="gunicorn worker processes")
@click.option("--connections", default=1000, show_default=True,
              help="Open connections per worker process; past them new ones wait to be accepted.")
@click.option("--keep-alive", default=30, show_default=True,
              help="Seconds an idle connection stays open, and a client may take to send a "
                   "request's headers or a JSON body.")
def api(host: str, port: int, workers: int, connections: int, keep_alive: int) -> None:
    """Serve the API with gunicorn."""
    check_service(get_settings(), worker=False)
    command = api_command(host, port, workers, connections, keep_alive)
    os.execv(command[0], command)


@main.command()
@click.option("--queues", default=None, help="Comma-separated queues (default: every shared "
              "queue and this node's own).")
@click.option("--concurrency", default=2, show_default=True)
def worker(queues: str | None, concurrency: int) -> None:
    """Run a Celery worker."""
    check_service(get_settings(), worker=True)
    command = worker_command(queues or default_queues(), concurrency)
    os.execve(command[0], command, worker_environment())


@main.command()
@click.option("--queue", default=None, help="The queue to probe (default: this node's own).")
@click.option("--timeout", default=10.0, show_default=True, help="Seconds to wait.")
def health(queue: str | None, timeout: float) -> None:
    """Send a canary through the broker; exit 0 once a worker consumed it, 1 if none did.

    A worker of this host whose every slot runs a job takes no message until one ends, however
    long a build takes: when it answers the broker and says so, it is healthy too (exit 0).
    """
    import secrets as random_tokens

    import redis

    from app.jobs.queueing import producer

    queue = queue or node_queue(get_settings().node_id)
    token = random_tokens.token_hex(16)
    key = f"imagejobs:canary:{token}"
    client = redis.Redis.from_url(get_settings().redis_url)
    started = time.monotonic()
    try:
        # The canary expires with the wait, so a deaf worker is not left a backlog of them.
        producer().send_task("imagejobs.canary", args=[token], queue=queue, expires=timeout)
        while time.monotonic() - started < timeout:
            consumer = client.get(key)
            if consumer:
                click.echo(f"healthy: {consumer.decode()} consumed the canary on {queue} in "
                           f"{(time.monotonic() - started) * 1000:.0f} ms")
                client.delete(key)
                return
            time.sleep(0.1)
    finally:
        client.close()
    busy = _busy_workers_here(queue)
    if busy:
        click.echo(f"healthy: {busy} answered the broker with every slot running a job; the "
                   f"canary on {queue} waits for a free one")
        return
    click.echo(f"unhealthy: no worker consumed the canary on {queue} within {timeout:g} s",
               err=True)
    sys.exit(1)


def _busy_workers_here(queue: str, seconds: float = 1.5) -> str | None:
    """The names of this host's workers consuming `queue`, when each answers a remote-control
    request and runs as many jobs as it has pool processes; None if any is idle, or none answers.

    The request is matched by the workers (their `--hostname`, see worker_command), so only this
    node's workers on this host answer.
    """
    import re
    import socket

    from app.jobs.queueing import producer

    here = re.escape(f"imagejobs@{get_settings().node_id}-{socket.gethostname()}-") + r"\d+"
    inspect = producer().control.inspect(timeout=seconds, pattern=here, matcher="pcre")
    try:
        consuming = {name for name, queues in (inspect.active_queues() or {}).items()
                     if any(q.get("name") == queue for q in queues)}
        active = inspect.active() or {}
        stats = inspect.stats() or {}
    except Exception as exc:  # the broker is away: nothing says the workers are busy
        click.echo(f"could not ask this host's workers whether they are busy: "
                   f"{type(exc).__name__}", err=True)
        return None
    if not consuming:
        return None
    for name in consuming:
        slots = (stats.get(name) or {}).get("pool", {}).get("max-concurrency")
        if not slots or len(active.get(name) or ()) < slots:
            return None
    return ", ".join(sorted(consuming))


@main.command("secret-key")
@click.option("--file", "path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the key to this file (mode 0600) unless it already holds one.")
def secret_key(path: Path | None) -> None:
    """Make a key for IMAGEJOBS_SECRET_KEY (or IMAGEJOBS_SECRET_KEY_FILE): printed, or written."""
    if path is None:
        click.echo(new_secret_key())
    elif write_key_file(path):
        click.echo(f"wrote a new secret key to {path}")
    else:
        click.echo(f"kept the secret key already in {path}")


@main.command()
def reseal() -> None:
    """Seal every stored credential with the first IMAGEJOBS_SECRET_KEY, so older keys can go."""
    from sqlalchemy import select

    from app import vault
    from app.db import transaction
    from app.models import Image, ImageSource

    resealed = unreadable = 0
    for model in (ImageSource, Image):
        with transaction() as session:
            rows = session.scalars(select(model).where(model.origin_secrets.is_not(None))
                                   .with_for_update())
            for row in rows:
                try:
                    row.origin_secrets = vault.reseal(row.origin_secrets)
                    resealed += 1
                except vault.UnreadableSecrets:
                    unreadable += 1
    click.echo(f"resealed the credentials of {resealed} source or image rows with the first key")
    if unreadable:
        click.echo(f"left {unreadable} rows whose credentials no configured key decrypts",
                   err=True)
        sys.exit(1)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True)
@click.option("--concurrency", default=2, show_default=True)
def dev(host: str, port: int, concurrency: int) -> None:
    """Migrate, then run the API and one worker together until interrupted.

    Without a configured secret key it makes one, once, in ~/.local/share/imagejobs.
    """
    from app import migrations

    if not get_settings().secret_keys:
        write_key_file(DEV_KEY_FILE)
        os.environ["IMAGEJOBS_SECRET_KEY_FILE"] = str(DEV_KEY_FILE)
        use_settings(Settings.from_env())
    if not get_settings().node_id_chosen:
        # The worker runs beside the engine this machine serves it (`make run` starts one here):
        # the host name lasts as long as that engine's images do, in a container too.
        os.environ["IMAGEJOBS_NODE_ID"] = get_settings().node_id
        use_settings(Settings.from_env())
    migrations.create_database_if_missing()
    migrations.upgrade()
    processes = [subprocess.Popen(api_command(host, port, 1)),
                 subprocess.Popen(worker_command(default_queues(), concurrency),
                                  env=worker_environment())]

    def stop(*_: object) -> None:
        for process in processes:
            if process.poll() is None:
                process.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while all(p.poll() is None for p in processes):
            time.sleep(0.5)
    finally:
        stop()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    sys.exit(max(abs(p.returncode or 0) for p in processes))


if __name__ == "__main__":
    main()
