"""The schema of Atelier 0.1.0, the last release before migrations.

0.1.0 created each store's tables on first use, so a database of that release may hold some of them or all.
This migration creates only the ones that are missing, which makes it the starting point for new and old
databases alike.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def _missing(name: str) -> bool:
    return not sa.inspect(op.get_bind()).has_table(name)


def upgrade() -> None:
    if _missing("jobs"):
        op.create_table(
            "jobs",
            sa.Column(
                "seq",
                sa.BigInteger().with_variant(sa.Integer, "sqlite"),
                primary_key=True,
                autoincrement=True,
            ),
            sa.Column("id", sa.String(64), nullable=False, unique=True),
            sa.Column("kind", sa.String(16), nullable=False),
            sa.Column("state", sa.String(16), nullable=False),
            sa.Column("priority", sa.Integer, nullable=False),
            sa.Column("payload", sa.JSON, nullable=False),
            sa.Column("result", sa.JSON),
            sa.Column("error", sa.Text),
            sa.Column("owner", sa.String(200)),
            sa.Column("attempts", sa.Integer, nullable=False),
            sa.Column("max_attempts", sa.Integer, nullable=False),
            sa.Column("progress_step", sa.Integer),
            sa.Column("progress_total", sa.Integer),
            sa.Column("progress_info", sa.JSON, nullable=False),
            sa.Column("cancel_requested", sa.Boolean, nullable=False),
            sa.Column("worker_id", sa.String(200)),
            sa.Column("lease_expires_at", TZ),
            sa.Column("created_at", TZ, nullable=False),
            sa.Column("started_at", TZ),
            sa.Column("finished_at", TZ),
            sa.Column("webhook_url", sa.Text),
        )
        op.create_index("ix_jobs_queue_order", "jobs", ["state", "priority", "created_at", "seq"])
        op.create_index("ix_jobs_lease", "jobs", ["state", "lease_expires_at"])
        op.create_index("ix_jobs_created", "jobs", ["created_at"])
    if _missing("processed_objects"):
        op.create_table(
            "processed_objects",
            sa.Column("bucket", sa.String(64), primary_key=True),
            sa.Column("key", sa.String(1024), primary_key=True),
            sa.Column("version", sa.String(256), primary_key=True),
            sa.Column("state", sa.String(16), nullable=False),
            sa.Column("error", sa.Text),
            sa.Column("worker_id", sa.String(200)),
            sa.Column("claimed_at", TZ, nullable=False),
            sa.Column("finished_at", TZ),
        )
        op.create_index("ix_processed_objects_state", "processed_objects", ["state"])
        op.create_index("ix_processed_objects_claimed", "processed_objects", ["claimed_at"])
    if _missing("registered_models"):
        op.create_table(
            "registered_models",
            sa.Column("kind", sa.String(16), primary_key=True),
            sa.Column("name", sa.String(255), primary_key=True),
            sa.Column("storage_key", sa.String(1024), nullable=False, unique=True),
            sa.Column("is_folder", sa.Boolean, nullable=False),
            sa.Column("architecture", sa.String(32), nullable=False),
            sa.Column("family", sa.String(16), nullable=False),
            sa.Column("sha256", sa.String(64), nullable=False),
            sa.Column("lora_hash", sa.String(64)),
            sa.Column("size", sa.BigInteger, nullable=False),
            sa.Column("version", sa.String(256), nullable=False),
            sa.Column("source", sa.String(16), nullable=False),
            sa.Column("label", sa.String(255)),
            sa.Column("details", sa.JSON, nullable=False),
            sa.Column("created_at", TZ, nullable=False),
            sa.Column("updated_at", TZ, nullable=False),
        )
    if _missing("studio_settings"):
        op.create_table(
            "studio_settings",
            sa.Column("key", sa.String(128), primary_key=True),
            sa.Column("value", sa.JSON, nullable=False),
            sa.Column("updated_at", TZ, nullable=False),
        )
    if _missing("api_keys"):
        op.create_table(
            "api_keys",
            sa.Column("name", sa.String(100), primary_key=True),
            sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
            sa.Column("hint", sa.String(16), nullable=False),
            sa.Column("created_at", TZ, nullable=False),
            sa.Column("revoked_at", TZ),
        )
    if _missing("webhook_deliveries"):
        op.create_table(
            "webhook_deliveries",
            sa.Column("job_id", sa.String(64), primary_key=True),
            sa.Column("url", sa.Text, nullable=False),
            sa.Column("state", sa.String(16), nullable=False),
            sa.Column("attempts", sa.Integer, nullable=False),
            sa.Column("next_attempt_at", TZ, nullable=False),
            sa.Column("last_status", sa.Integer),
            sa.Column("last_error", sa.Text),
            sa.Column("created_at", TZ, nullable=False),
            sa.Column("delivered_at", TZ),
        )
        op.create_index("ix_webhook_deliveries_due", "webhook_deliveries", ["state", "next_attempt_at"])
