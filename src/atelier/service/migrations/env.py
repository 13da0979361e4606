"""Alembic's environment: migrations run on the connection :func:`atelier.service.database.migrate` holds.

Atelier applies migrations itself at start-up (under a lock), so there is no ``alembic.ini`` and no URL here.
To write a new migration, copy the newest file in ``versions/``, give it the next number as ``revision`` and
the previous one as ``down_revision``, and raise ``HEAD_REVISION`` in ``database.py``; the tests check that
the migrated schema equals the tables the code defines.
"""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
# Batch mode: SQLite cannot ALTER most things in place, so Alembic copies the table for those changes.
context.configure(connection=connection, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
