"""``leader_leases``: one row per role that a single process of many must do (the bucket watcher).

Several ``serve`` replicas share the database; the replica holding the row's unexpired lease leads (see
``service/leader.py``). Nothing in it needs keeping: a leader writes its row again within a second.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "leader_leases",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(200), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("leader_leases")
