"""jobs: retry_of, the ended job whose work a job does again

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 04:10:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('jobs', sa.Column('retry_of', sa.String(length=24), nullable=True))


def downgrade() -> None:
    op.drop_column('jobs', 'retry_of')
