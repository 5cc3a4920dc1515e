"""KYC through providers: webhook events de-duplicated by (provider, event id), verification
references, the requested level, document type and the provider time of the newest event.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 08:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "kyc_webhook_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("event_id", sa.String(length=200), nullable=False),
        sa.Column("event_type", sa.String(length=100), nullable=False),
        sa.Column("provider_ref", sa.String(length=200), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kyc_webhook_events")),
        sa.UniqueConstraint(
            "provider", "event_id", name=op.f("uq_kyc_webhook_events_provider_event_id")
        ),
    )
    with op.batch_alter_table("kyc_verifications", schema=None) as batch_op:
        batch_op.add_column(sa.Column("requested_level", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("document_type", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("event_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(
            "ix_kyc_verifications_provider_ref", ["provider", "provider_ref"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("kyc_verifications", schema=None) as batch_op:
        batch_op.drop_index("ix_kyc_verifications_provider_ref")
        batch_op.drop_column("updated_at")
        batch_op.drop_column("event_at")
        batch_op.drop_column("document_type")
        batch_op.drop_column("requested_level")
    op.drop_table("kyc_webhook_events")
