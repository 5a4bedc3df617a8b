"""hubs, keys, sources, images, build logs and jobs

Revision ID: 0001
Revises: 
Create Date: 2026-11-28 04:25:35.784934
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('hubs',
    sa.Column('id', sa.String(length=24), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('created', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_hubs'))
    )
    op.create_table('jobs',
    sa.Column('id', sa.String(length=24), nullable=False),
    sa.Column('hub_id', sa.String(length=24), nullable=False),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('queue', sa.String(length=128), nullable=False),
    sa.Column('caption', sa.String(length=512), nullable=False),
    sa.Column('subject_id', sa.String(length=24), nullable=True),
    sa.Column('input', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('tasks', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.Column('limit_duplicates', sa.Boolean(), nullable=False),
    sa.Column('creator_type', sa.String(length=32), nullable=False),
    sa.Column('creator_id', sa.String(length=24), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('state_changed', sa.DateTime(timezone=True), nullable=False),
    sa.Column('error_message', sa.String(), nullable=True),
    sa.Column('queued_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('schedule', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires', sa.DateTime(timezone=True), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('lease_owner', sa.String(length=256), nullable=True),
    sa.Column('lease_expires', sa.DateTime(timezone=True), nullable=True),
    sa.Column('published_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_jobs'))
    )
    op.create_index('ix_jobs_hub_created', 'jobs', ['hub_id', 'id'], unique=False)
    op.create_index(op.f('ix_jobs_subject_id'), 'jobs', ['subject_id'], unique=False)
    op.create_index('ix_jobs_unfinished', 'jobs', ['state'], unique=False, postgresql_where=sa.text("state IN ('new', 'queued', 'scheduled', 'running')"))
    op.create_index('uq_jobs_active_hash', 'jobs', ['hash'], unique=True, postgresql_where=sa.text("limit_duplicates AND state IN ('new', 'queued', 'scheduled', 'running')"))
    op.create_table('api_keys',
    sa.Column('id', sa.String(length=24), nullable=False),
    sa.Column('hub_id', sa.String(length=24), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('secret_hash', sa.String(length=64), nullable=False),
    sa.Column('capabilities_all', sa.Boolean(), nullable=False),
    sa.Column('capabilities', postgresql.ARRAY(sa.String(length=64)), nullable=False),
    sa.Column('created', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoked', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['hub_id'], ['hubs.id'], name=op.f('fk_api_keys_hub_id_hubs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_keys'))
    )
    op.create_index(op.f('ix_api_keys_hub_id'), 'api_keys', ['hub_id'], unique=False)
    op.create_table('image_sources',
    sa.Column('id', sa.String(length=24), nullable=False),
    sa.Column('hub_id', sa.String(length=24), nullable=False),
    sa.Column('name', sa.String(length=256), nullable=False),
    sa.Column('identifier', sa.String(length=256), nullable=False),
    sa.Column('type', sa.String(length=32), nullable=False),
    sa.Column('about_description', sa.String(), nullable=True),
    sa.Column('origin', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('origin_secrets', sa.LargeBinary(), nullable=True),
    sa.Column('builder', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('acl', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('creator_type', sa.String(length=32), nullable=False),
    sa.Column('creator_id', sa.String(length=24), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('state_changed', sa.DateTime(timezone=True), nullable=False),
    sa.Column('state_error', sa.String(), nullable=True),
    sa.Column('created', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated', sa.DateTime(timezone=True), nullable=False),
    sa.Column('deleted', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['hub_id'], ['hubs.id'], name=op.f('fk_image_sources_hub_id_hubs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_image_sources'))
    )
    op.create_index(op.f('ix_image_sources_hub_id'), 'image_sources', ['hub_id'], unique=False)
    op.create_table('images',
    sa.Column('id', sa.String(length=24), nullable=False),
    sa.Column('hub_id', sa.String(length=24), nullable=False),
    sa.Column('source_id', sa.String(length=24), nullable=False),
    sa.Column('name', sa.String(length=256), nullable=False),
    sa.Column('about_description', sa.String(), nullable=True),
    sa.Column('origin', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('origin_secrets', sa.LargeBinary(), nullable=True),
    sa.Column('override', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('build', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('config', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('backend_provider', sa.String(length=64), nullable=False),
    sa.Column('backend_file_name', sa.String(length=512), nullable=False),
    sa.Column('backend_file_id', sa.String(length=128), nullable=False),
    sa.Column('factory_node_id', sa.String(length=256), nullable=True),
    sa.Column('factory_acknowledged', sa.DateTime(timezone=True), nullable=True),
    sa.Column('factory_cached', sa.DateTime(timezone=True), nullable=True),
    sa.Column('creator_type', sa.String(length=32), nullable=False),
    sa.Column('creator_id', sa.String(length=24), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('state_changed', sa.DateTime(timezone=True), nullable=False),
    sa.Column('state_error', sa.String(), nullable=True),
    sa.Column('state_error_time', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated', sa.DateTime(timezone=True), nullable=False),
    sa.Column('deleted', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['hub_id'], ['hubs.id'], name=op.f('fk_images_hub_id_hubs')),
    sa.ForeignKeyConstraint(['source_id'], ['image_sources.id'], name=op.f('fk_images_source_id_image_sources')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_images'))
    )
    op.create_index(op.f('ix_images_hub_id'), 'images', ['hub_id'], unique=False)
    op.create_index(op.f('ix_images_source_id'), 'images', ['source_id'], unique=False)
    op.create_index(op.f('ix_images_state'), 'images', ['state'], unique=False)
    op.create_table('image_build_logs',
    sa.Column('id', sa.String(length=24), nullable=False),
    sa.Column('hub_id', sa.String(length=24), nullable=False),
    sa.Column('image_id', sa.String(length=24), nullable=False),
    sa.Column('log', sa.Text(), nullable=False),
    sa.Column('truncated', sa.Boolean(), nullable=False),
    sa.Column('created', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated', sa.DateTime(timezone=True), nullable=False),
    sa.Column('deleted', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['hub_id'], ['hubs.id'], name=op.f('fk_image_build_logs_hub_id_hubs')),
    sa.ForeignKeyConstraint(['image_id'], ['images.id'], name=op.f('fk_image_build_logs_image_id_images')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_image_build_logs')),
    sa.UniqueConstraint('image_id', name=op.f('uq_image_build_logs_image_id'))
    )
    op.create_index(op.f('ix_image_build_logs_hub_id'), 'image_build_logs', ['hub_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_image_build_logs_hub_id'), table_name='image_build_logs')
    op.drop_table('image_build_logs')
    op.drop_index(op.f('ix_images_state'), table_name='images')
    op.drop_index(op.f('ix_images_source_id'), table_name='images')
    op.drop_index(op.f('ix_images_hub_id'), table_name='images')
    op.drop_table('images')
    op.drop_index(op.f('ix_image_sources_hub_id'), table_name='image_sources')
    op.drop_table('image_sources')
    op.drop_index(op.f('ix_api_keys_hub_id'), table_name='api_keys')
    op.drop_table('api_keys')
    op.drop_index('uq_jobs_active_hash', table_name='jobs', postgresql_where=sa.text("limit_duplicates AND state IN ('new', 'queued', 'scheduled', 'running')"))
    op.drop_index('ix_jobs_unfinished', table_name='jobs', postgresql_where=sa.text("state IN ('new', 'queued', 'scheduled', 'running')"))
    op.drop_index(op.f('ix_jobs_subject_id'), table_name='jobs')
    op.drop_index('ix_jobs_hub_created', table_name='jobs')
    op.drop_table('jobs')
    op.drop_table('hubs')
