"""Schema migrations (Alembic), run with `imagejobs db upgrade`."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from app.config import get_settings

HERE = Path(__file__).parent


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.set_main_option("sqlalchemy.url",
                           get_settings().database_url.replace("%", "%%"))
    return config


def create_database_if_missing() -> bool:
    """Create the configured database when the server has none of that name (True if made)."""
    url = make_url(get_settings().database_url)
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            exists = connection.scalar(text("SELECT 1 FROM pg_database WHERE datname = :name"),
                                       {"name": url.database})
            if not exists:
                connection.execute(text(f'CREATE DATABASE "{url.database}"'))
            return not exists
    finally:
        admin.dispose()


def upgrade(revision: str = "head") -> None:
    command.upgrade(alembic_config(), revision)
