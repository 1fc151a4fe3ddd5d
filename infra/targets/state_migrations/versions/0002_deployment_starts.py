"""Processes a deploy has started and not yet recorded or stopped, so a deploy killed midway leaves no orphan."""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.create_table(
        "deployment_starts",
        sa.Column("target", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("pid", sa.Integer, primary_key=True),
        sa.Column("process", sa.Text, nullable=False),
        sa.Column("since", sa.String(32), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("deployment_starts")
