"""Alembic environment: the models' metadata, the URL from the project's settings."""

from __future__ import annotations

from alembic import context

import app.models  # noqa: F401  (registers every table)
from app.db import Base, get_engine

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    with get_engine().connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata,
                          compare_type=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"),
                      target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
