"""``jobs.keep_partial``: A1111's interrupt stops a generation but keeps its picture so far.

A cancel discards a running generation; an interrupt (``/sdapi/v1/interrupt``, ``skip``) is asked to finish with
what it has. The flag rides with ``cancel_requested`` so the worker can tell the two apart.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as jobs:
        jobs.add_column(sa.Column("keep_partial", sa.Boolean, nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as jobs:
        jobs.drop_column("keep_partial")
