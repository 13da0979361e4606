"""The ``workers`` board: which workers are alive, whether their model is loaded, how often they loaded one.

Read by ``/health/ready`` (ready once a generation worker holds its model) and by ``/metrics``
(``atelier_model_loads_total``). Nothing in it needs keeping: a worker writes its own row again when it starts.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("kinds", sa.String(100), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("loaded_models", sa.JSON, nullable=False),
        sa.Column("model_loads", sa.Integer, nullable=False),
        sa.Column("started_at", TZ, nullable=False),
        sa.Column("seen_at", TZ, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("workers")
