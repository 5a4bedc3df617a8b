"""jobs: cancel_requested_by and cancel_requested_at, a cancel asked of a running job

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 07:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('jobs', sa.Column('cancel_requested_by', sa.String(length=24), nullable=True))
    op.add_column('jobs', sa.Column('cancel_requested_at', sa.DateTime(timezone=True),
                                    nullable=True))


def downgrade() -> None:
    op.drop_column('jobs', 'cancel_requested_at')
    op.drop_column('jobs', 'cancel_requested_by')
