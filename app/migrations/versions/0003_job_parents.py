"""a job's parent: the prune or source deletion that waits for it

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 08:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('jobs', sa.Column('parent_id', sa.String(length=24), nullable=True))
    op.create_index('ix_jobs_parent_id', 'jobs', ['parent_id'])


def downgrade() -> None:
    op.drop_index('ix_jobs_parent_id', table_name='jobs')
    op.drop_column('jobs', 'parent_id')
