"""recordings.section: the section (machine ID) a recording was scored in, so its normal profile
(the average log-mel of that section's training normals) can be found again; NULL for recordings
stored before this revision.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06 21:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('recordings') as batch:
        batch.add_column(sa.Column('section', sa.String(length=100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('recordings') as batch:
        batch.drop_column('section')
