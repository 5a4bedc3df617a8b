"""upload tokens of cycle-upload images

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 04:52:18.825996
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('images', sa.Column('upload_token_hash', sa.String(length=64), nullable=True))
    op.add_column('images', sa.Column('upload_expires', sa.DateTime(timezone=True), nullable=True))
    op.add_column('images', sa.Column('upload_received', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column('images', 'upload_received')
    op.drop_column('images', 'upload_expires')
    op.drop_column('images', 'upload_token_hash')
