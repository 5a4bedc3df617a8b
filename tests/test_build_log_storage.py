"""Build logs kept as append-only chunks: what a reader sees from any offset, what a flush writes,
and what survives a flush that fails, a NUL in the output, a lost claim and the migration."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from sqlalchemy import create_engine, text, update

import app.images.lifecycle  # noqa: F401  (the job below is an image import)
from app.db import transaction
from app.jobs import execution
from app.jobs.execution import Claim
from app.jobs.services import NewTask, create_job
from app.models import Image, Job
from tests.api_calls import Tenant, stored_image
from tests.services import ADMIN_URL, ROOT, recreate_database
from workers.buildlog import BuildLogWriter, open_log

IDLE_QUEUE = "imagejobs-test-idle"
HEADER = "[imagejobs: build attempt 1 on node test-node]\n"


def building(tenant: Tenant) -> tuple[str, Claim]:
    """An image whose import job this test holds, its build log opened as a worker opens it."""
    image_id = stored_image(tenant)
    with transaction() as session:
        job = create_job(session, hub_id=tenant.hub_id,
                         creator={"id": tenant.key_id, "type": "api-key"},
                         action="image.import", queue=IDLE_QUEUE, caption="build",
                         subject_id=image_id,
                         task=NewTask(header="import", caption="Import", input={"i": image_id}))
        job_id = job.id
    claim = execution.claim(job_id, "test-worker")
    assert claim is not None
    with transaction() as session:
        open_log(session, session.get(Image, image_id), claim.attempt, HEADER)
    return image_id, claim


def write(claim: Claim, image_id: str, *pieces: str) -> BuildLogWriter:
    """Each piece appended and flushed on its own, as a build printing for a while is."""
    writer = BuildLogWriter(claim, image_id, already=len(HEADER))
    for piece in pieces:
        writer.append(piece)
        writer.flush()
    return writer


def read(api, image_id: str, offset: int = 0) -> dict:
    response = api.get(f"/v1/images/{image_id}/build-log?offset={offset}")
    assert response.status_code == 200, response.get_json()
    return response.get_json()["data"]


def chunk_rows(image_id: str) -> list[tuple]:
    with transaction() as session:
        return [tuple(row) for row in session.execute(text(
            "SELECT start, ctid::text, xmin::text, text FROM image_build_log_chunks "
            "WHERE image_id = :i ORDER BY start"), {"i": image_id})]


PIECES = ("Step 1/3 : FROM busybox\n", "Step 2/3 : RUN echo héllo\nhéllo\n", "Step 3/3 : "
          "COPY . /srv\n", "Successfully built 0123456789ab\n")


def test_a_log_read_from_any_offset_is_exactly_the_text_past_it(api, tenant):
    image_id, claim = building(tenant)
    write(claim, image_id, *PIECES)
    whole = HEADER + "".join(PIECES)
    boundaries = [len(HEADER)]
    for piece in PIECES:
        boundaries.append(boundaries[-1] + len(piece))
    offsets = sorted({0, 1, len(HEADER) - 1, *boundaries, boundaries[1] + 5,
                      boundaries[2] - 1, len(whole) - 1, len(whole), len(whole) + 10})
    for offset in offsets:
        data = read(api, image_id, offset)
        assert data["log"] == whole[offset:], offset
        assert data["meta"]["next_offset"] == len(whole)
        assert data["meta"]["offset"] == offset


def test_a_flush_adds_its_text_and_never_rewrites_what_is_stored(tenant):
    image_id, claim = building(tenant)
    write(claim, image_id, PIECES[0])
    first = chunk_rows(image_id)
    write(claim, image_id, *PIECES[1:])
    rows = chunk_rows(image_id)
    # The rows already there are the same row versions: Postgres wrote none of them again.
    assert rows[:len(first)] == first
    assert [row[3] for row in rows] == [HEADER, *PIECES]
    assert [row[0] for row in rows] == [sum(map(len, [HEADER, *PIECES][:i]))
                                        for i in range(len(PIECES) + 1)]


def test_lines_of_a_flush_that_failed_are_written_by_the_next_in_order(api, tenant):
    image_id, claim = building(tenant)
    writer = write(claim, image_id, "line 1\n")
    writer.append("line 2\n")
    with transaction() as session:  # a real failure of the database write
        session.execute(text("ALTER TABLE image_build_log_chunks RENAME TO chunks_away"))
    try:
        with pytest.raises(Exception, match="image_build_log_chunks"):
            writer.flush()
        writer.append("line 3\n")
    finally:
        with transaction() as session:
            session.execute(text("ALTER TABLE chunks_away RENAME TO image_build_log_chunks"))
    writer.flush()
    assert read(api, image_id)["log"] == HEADER + "line 1\nline 2\nline 3\n"


def test_a_nul_the_build_prints_is_replaced_and_the_rest_of_the_log_kept(api, tenant):
    image_id, claim = building(tenant)
    write(claim, image_id, "before\x00after\n", "next line\n")
    assert read(api, image_id)["log"] == HEADER + "before\ufffdafter\nnext line\n"


def test_a_writer_whose_claim_was_taken_over_adds_nothing(api, tenant):
    image_id, claim = building(tenant)
    write(claim, image_id, "mine\n")
    with transaction() as session:  # the sweeper gave the job to another attempt
        session.execute(update(Job).where(Job.id == claim.job_id)
                        .values(attempt=claim.attempt + 1))
    write(claim, image_id, "too late\n")
    data = read(api, image_id)
    assert data["log"] == HEADER + "mine\n"
    assert data["meta"]["next_offset"] == len(HEADER + "mine\n")


def test_a_new_import_starts_a_fresh_log_and_a_retried_attempt_keeps_the_old(api, tenant):
    image_id, claim = building(tenant)
    write(claim, image_id, "first import\n")
    retried = HEADER.replace("attempt 1", "attempt 2")
    with transaction() as session:
        open_log(session, session.get(Image, image_id), 2, retried)
    assert read(api, image_id)["log"] == HEADER + "first import\n" + retried
    with transaction() as session:
        open_log(session, session.get(Image, image_id), 1, HEADER)
    assert read(api, image_id)["log"] == HEADER
    assert [row[3] for row in chunk_rows(image_id)] == [HEADER]


def _migrate(database: str, command: str, revision: str) -> None:
    env = {**os.environ,
           "DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}"}
    subprocess.run([sys.executable, "-c", "from alembic import command; "
                    "from app.migrations import alembic_config; "
                    f"command.{command}(alembic_config(), {revision!r})"],
                   cwd=ROOT, env=env, check=True, capture_output=True, timeout=120)


def test_logs_kept_whole_before_the_chunks_are_carried_over_and_back():
    database = "imagejobs_test_migration"
    recreate_database(database)
    _migrate(database, "upgrade", "0004")
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{database}"
    engine = create_engine(url)
    old_log = "Step 1/1 : FROM busybox\n" + "ünïcode line\n" * 1000
    with engine.begin() as connection:
        for statement in (
            "INSERT INTO hubs (id, name, created) VALUES ('h', 'h', now())",
            "INSERT INTO image_sources (id, hub_id, name, identifier, type, origin, creator_type, "
            "creator_id, state, state_changed, created, updated) VALUES ('s', 'h', 's', 's', "
            "'direct', '{}', 'api-key', 'k', 'live', now(), now(), now())",
            "INSERT INTO images (id, hub_id, source_id, name, origin, config, size, "
            "backend_provider, backend_file_name, backend_file_id, creator_type, creator_id, "
            "state, state_changed, created, updated) VALUES ('i', 'h', 's', 'i', '{}', '{}', 0, "
            "'', '', '', 'api-key', 'k', 'live', now(), now(), now())",
        ):
            connection.execute(text(statement))
        connection.execute(text(
            "INSERT INTO image_build_logs (id, hub_id, image_id, log, truncated, created, "
            "updated) VALUES ('l', 'h', 'i', :log, true, now(), now())"), {"log": old_log})
    try:
        _migrate(database, "upgrade", "head")
        with engine.begin() as connection:
            assert connection.execute(text(
                "SELECT length, truncated FROM image_build_logs")).one() == (len(old_log), True)
            assert connection.scalar(text(
                "SELECT string_agg(text, '' ORDER BY start) FROM image_build_log_chunks "
                "WHERE image_id = 'i'")) == old_log
        _migrate(database, "downgrade", "0004")
        with engine.begin() as connection:
            assert connection.scalar(text("SELECT log FROM image_build_logs")) == old_log
    finally:
        engine.dispose()
