"""Retries wait at the back of the queue; API keys get roles.

- ``jobs.queued_at``: when the job last entered the queue. The queue is ordered by it, so a retried job waits
  behind the jobs already queued instead of meeting every crash first. Filled with ``created_at``.
- ``api_keys.role``: "user" or "admin". Keys made before roles existed could do everything, so they become
  admins; new keys are users unless made with ``--admin``.
- The per-component version table of 0.1.0 is replaced by Alembic's.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("jobs") as jobs:
        jobs.add_column(sa.Column("queued_at", TZ))
    op.execute("UPDATE jobs SET queued_at = created_at")
    with op.batch_alter_table("jobs") as jobs:
        jobs.alter_column("queued_at", existing_type=TZ, nullable=False)
        jobs.drop_index("ix_jobs_queue_order")
        jobs.create_index("ix_jobs_queue_order", ["state", "priority", "queued_at", "seq"])
    with op.batch_alter_table("api_keys") as keys:
        keys.add_column(sa.Column("role", sa.String(16), nullable=False, server_default="admin"))
    if sa.inspect(op.get_bind()).has_table("atelier_schema_versions"):
        op.drop_table("atelier_schema_versions")
