"""hub_events: what happened to a hub's jobs, images and sources, recorded by the database itself

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 06:30:00.000000

Triggers record an event in the transaction that changes a job, an image or a source, so no code
path can change one without its event, and an event exists only if its change committed. They
also NOTIFY the API processes that follow (app/events/): `imagejobs_events` with the hub's id
for a new event, `imagejobs_jobs` with a job's id when its document may have changed, and
`imagejobs_logs` with an image's id when its build log grew. NOTIFY is sent at commit.

`seq` numbers a hub's events in the order they are told. Ids come from a sequence when rows
are inserted, not when they commit, so a reader following ids could skip one that commits late;
a sequencer (app/events/stream.py) numbers committed events, hub by hub, in the order it finds
them instead. `hub_event_counters` keeps each hub's last number, so numbers never go back when
old events are deleted.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

# TG_ARGV: the topic prefix, then the column holding the error message.
RECORD_EVENT = """
CREATE FUNCTION imagejobs_record_event() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    prefix text := TG_ARGV[0];
    error_column text := TG_ARGV[1];
    error_now text := to_jsonb(NEW) ->> error_column;
    object jsonb := jsonb_build_object(
        'id', NEW.id, 'state', NEW.state, 'state_previous', NULL,
        'error', CASE WHEN error_now IS NULL THEN NULL
                      ELSE jsonb_build_object('message', error_now) END);
    topics text[] := '{}';
BEGIN
    IF TG_OP = 'INSERT' THEN
        topics := ARRAY[prefix || '.new'];
    ELSE
        object := object || jsonb_build_object('state_previous', OLD.state);
        IF NEW.state IS DISTINCT FROM OLD.state THEN
            topics := ARRAY[prefix || '.state.changed'];
        ELSIF prefix <> 'job' AND to_jsonb(NEW) IS DISTINCT FROM to_jsonb(OLD) THEN
            -- A job's other columns change with its lease, which nobody follows.
            topics := ARRAY[prefix || '.updated'];
        END IF;
        IF error_now IS NOT NULL AND error_now IS DISTINCT FROM to_jsonb(OLD) ->> error_column
           AND (prefix <> 'job' OR NEW.state = 'error') THEN
            topics := topics || (prefix || '.error');
        END IF;
    END IF;
    IF cardinality(topics) > 0 THEN
        INSERT INTO hub_events (hub_id, topic, object)
        SELECT NEW.hub_id, topic, object FROM unnest(topics) AS topic;
        PERFORM pg_notify('imagejobs_events', NEW.hub_id);
    END IF;
    RETURN NULL;
END $$;
"""

# TG_ARGV: the channel; the payload is the row's column named by the second argument.
NOTIFY = """
CREATE FUNCTION imagejobs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_ARGV[0], to_jsonb(NEW) ->> TG_ARGV[1]);
    RETURN NULL;
END $$;
"""

# The columns a job's document shows; a lease renewal changes none of them.
JOB_DOCUMENT_CHANGED = ("OLD.state IS DISTINCT FROM NEW.state OR OLD.tasks IS DISTINCT FROM "
                        "NEW.tasks OR OLD.error_message IS DISTINCT FROM NEW.error_message OR "
                        "OLD.schedule IS DISTINCT FROM NEW.schedule OR OLD.started_at IS "
                        "DISTINCT FROM NEW.started_at OR OLD.state_changed IS DISTINCT FROM "
                        "NEW.state_changed")


def upgrade() -> None:
    op.create_table(
        'hub_events',
        sa.Column('id', sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column('seq', sa.BigInteger(), nullable=True),
        sa.Column('hub_id', sa.String(length=24), nullable=False),
        sa.Column('topic', sa.String(length=64), nullable=False),
        sa.Column('object', sa.dialects.postgresql.JSONB(), nullable=False),
        sa.Column('created', sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.text('now()')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_hub_events')),
    )
    op.create_index('uq_hub_events_hub_id', 'hub_events', ['hub_id', 'seq'], unique=True)
    op.create_index('ix_hub_events_unsequenced', 'hub_events', ['id'],
                    postgresql_where=sa.text('seq IS NULL'))
    op.create_index('ix_hub_events_created', 'hub_events', ['created'])
    op.create_table(
        'hub_event_counters',
        sa.Column('hub_id', sa.String(length=24), nullable=False),
        sa.Column('last', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('hub_id', name=op.f('pk_hub_event_counters')),
    )

    op.execute(RECORD_EVENT)
    op.execute(NOTIFY)
    # A job's events are all about its state: the trigger skips the updates that leave it out
    # (a lease renewed, progress noted), which are most of them.
    for table, columns, prefix, error_column in (
            ('jobs', 'UPDATE OF state', 'job', 'error_message'),
            ('images', 'UPDATE', 'image', 'state_error'),
            ('image_sources', 'UPDATE', 'image.source', 'state_error')):
        op.execute(f"CREATE TRIGGER {table}_events AFTER INSERT OR {columns} ON {table} "
                   f"FOR EACH ROW EXECUTE FUNCTION imagejobs_record_event('{prefix}', "
                   f"'{error_column}')")
    op.execute(f"CREATE TRIGGER jobs_changed AFTER UPDATE ON jobs FOR EACH ROW "
               f"WHEN ({JOB_DOCUMENT_CHANGED}) EXECUTE FUNCTION imagejobs_notify('imagejobs_jobs', 'id')")
    op.execute("CREATE TRIGGER image_build_log_chunks_grew AFTER INSERT ON "
               "image_build_log_chunks FOR EACH ROW EXECUTE FUNCTION "
               "imagejobs_notify('imagejobs_logs', 'image_id')")


def downgrade() -> None:
    op.execute("DROP TRIGGER image_build_log_chunks_grew ON image_build_log_chunks")
    op.execute("DROP TRIGGER jobs_changed ON jobs")
    for table in ('jobs', 'images', 'image_sources'):
        op.execute(f"DROP TRIGGER {table}_events ON {table}")
    op.execute("DROP FUNCTION imagejobs_notify()")
    op.execute("DROP FUNCTION imagejobs_record_event()")
    op.drop_table('hub_event_counters')
    op.drop_table('hub_events')
