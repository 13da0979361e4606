"""``workers.vram``: each worker's GPU memory (used, total, free, peak, reserved bytes) for ``/metrics``.

Empty (NULL) for workers without a CUDA device, and for rows written before this release.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workers") as workers:
        workers.add_column(sa.Column("vram", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workers") as workers:
        workers.drop_column("vram")
