"""The edge fleet: devices, enrollment tokens, rollouts and each device's part in a rollout."""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.create_table(
        "fleet_devices",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("spec", sa.Text, nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("hw_class", sa.String(16), nullable=False),
        sa.Column("enrolled_at", sa.Float, nullable=False),
        sa.Column("last_seen", sa.Float, nullable=False),
        sa.Column("due", sa.Float, nullable=False),
        sa.Column("heartbeat", sa.Text),
        sa.Column("failures", sa.Integer, nullable=False, server_default="0"),
        sa.Column("penalty", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_table(
        "fleet_tokens",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("labels", sa.Text, nullable=False),
        sa.Column("uses_left", sa.Integer, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )
    op.create_table(
        "fleet_rollouts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("fleet", sa.String(255), nullable=False, index=True),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("alias", sa.String(255), nullable=False),
        sa.Column("release", sa.Text, nullable=False),
        sa.Column("previous", sa.Text),
        sa.Column("selector", sa.Text, nullable=False),
        sa.Column("policy", sa.Text, nullable=False),
        sa.Column("variants", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("wave", sa.Integer, nullable=False),
        sa.Column("wave_started", sa.Float, nullable=False),
        sa.Column("halted_classes", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "fleet_targets",
        sa.Column("rollout_id", sa.Integer, primary_key=True),
        sa.Column("device_id", sa.String(64), primary_key=True),
        sa.Column("hw_class", sa.String(16), nullable=False),
        sa.Column("wave", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False, index=True),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("variant", sa.Text),
        sa.Column("failure", sa.String(16)),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("loaded_new", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("assigned_at", sa.Float),
        sa.Column("done_at", sa.Float),
    )


def downgrade() -> None:
    for table in ("fleet_targets", "fleet_rollouts", "fleet_tokens", "fleet_devices"):
        op.drop_table(table)
