"""build logs as append-only chunks, so a flush writes only its new text

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 03:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'image_build_log_chunks',
        sa.Column('image_id', sa.String(length=24), nullable=False),
        sa.Column('start', sa.BigInteger(), nullable=False),
        sa.Column('text', sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(['image_id'], ['images.id'],
                                name=op.f('fk_image_build_log_chunks_image_id_images')),
        sa.PrimaryKeyConstraint('image_id', 'start', name=op.f('pk_image_build_log_chunks')),
    )
    op.add_column('image_build_logs',
                  sa.Column('length', sa.BigInteger(), nullable=False, server_default='0'))
    # Each existing log becomes its first chunk.
    op.execute("""
        INSERT INTO image_build_log_chunks (image_id, start, text)
        SELECT image_id, 0, log FROM image_build_logs WHERE log <> ''
    """)
    op.execute("UPDATE image_build_logs SET length = char_length(log)")
    op.alter_column('image_build_logs', 'length', server_default=None)
    op.drop_column('image_build_logs', 'log')


def downgrade() -> None:
    op.add_column('image_build_logs',
                  sa.Column('log', sa.Text(), nullable=False, server_default=''))
    op.execute("""
        UPDATE image_build_logs AS logs SET log = chunks.text
        FROM (SELECT image_id, string_agg(text, '' ORDER BY start) AS text
              FROM image_build_log_chunks GROUP BY image_id) AS chunks
        WHERE chunks.image_id = logs.image_id
    """)
    op.alter_column('image_build_logs', 'log', server_default=None)
    op.drop_column('image_build_logs', 'length')
    op.drop_table('image_build_log_chunks')
