"""Alembic migrations of the studio database (applied by :func:`atelier.service.database.migrate`)."""
