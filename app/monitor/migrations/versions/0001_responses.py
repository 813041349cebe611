"""The responses table: one row per scored response.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "responses",
        sa.Column("id", sa.String(80), primary_key=True),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("replica", sa.String(200), nullable=False),
        sa.Column("route", sa.String(64), nullable=False),
        sa.Column("model", sa.String(300), nullable=False),
        sa.Column("model_fingerprint", sa.String(64), nullable=False),
        sa.Column("calibration", sa.String(300)),
        sa.Column("prompt_format", sa.String(16), nullable=False),
        sa.Column("prompt_tokens", sa.Integer, nullable=False),
        sa.Column("response_tokens", sa.Integer, nullable=False),
        sa.Column("scores", sa.JSON, nullable=False),
        sa.Column("quadrant", sa.String(4)),
        sa.Column("risk", sa.Float),
        sa.Column("detector", sa.String(64)),
        sa.Column("in_distribution", sa.Boolean),
        sa.Column("distance_ratio", sa.Float),
        sa.Column("flagged", sa.Boolean),
        sa.Column("finish_reason", sa.String(32)),
        sa.Column("latency_s", sa.Float, nullable=False),
        sa.Column("prompt", sa.Text),
        sa.Column("response", sa.Text),
        sa.Column("prompt_hash", sa.String(64), nullable=False),
        sa.Column("response_hash", sa.String(64), nullable=False),
        sa.Column("label", sa.String(16)),
        sa.Column("note", sa.Text),
        sa.Column("labelled_ts", sa.Float),
    )
    op.create_index("ix_responses_ts", "responses", ["ts"])
    op.create_index("ix_responses_flagged_ts", "responses", ["flagged", "ts"])


def downgrade() -> None:
    op.drop_table("responses")
