"""Alembic environment: runs on the connection the service hands over, or on $SCANQC_DB_URL."""

from __future__ import annotations

from alembic import context
from scanqc.serving.store import Base
from sqlalchemy import create_engine, text

target_metadata = Base.metadata
config = context.config


def _run(connection) -> None:
    if connection.dialect.name == "postgresql":
        # Replicas starting together: one migrates, the others wait on the lock, then find nothing to do.
        connection.execute(text("SELECT pg_advisory_xact_lock(727274)"))
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    conn = config.attributes.get("connection")
    if conn is not None:
        _run(conn)
        return
    from scanqc.serving.config import load_settings

    engine = create_engine(load_settings().db_url)
    with engine.begin() as connection:
        _run(connection)
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline SQL generation is not supported; run against a database")
run_migrations_online()
