"""index accounts.email without blocking writes

Revision ID: 0003
Revises: 0002
"""
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # CREATE INDEX CONCURRENTLY cannot run in a transaction: safe-migrate knows this
    # revision is not transactional and snapshots the schema right before it.
    with op.get_context().autocommit_block():
        op.create_index("ix_accounts_email", "accounts", ["email"], unique=True,
                        postgresql_concurrently=True, if_not_exists=True)


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index("ix_accounts_email", table_name="accounts",
                      postgresql_concurrently=True, if_exists=True)
