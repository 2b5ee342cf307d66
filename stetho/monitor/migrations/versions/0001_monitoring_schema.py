"""The monitoring schema: assets, runs, recordings, verdicts, alerts, rejections.

Written once and frozen: it names plain SQLAlchemy types, never the ORM classes, so a later change
of stetho.monitor.db needs a new revision (tests/test_monitor_db.py compares the two).

Revision ID: 0001
Revises: (none)
Create Date: 2026-12-06 19:49:41.137783
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('assets',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('machine_type', sa.String(length=100), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_assets')),
    sa.UniqueConstraint('name', name=op.f('uq_assets_name'))
    )
    op.create_table('rejections',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=True),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('rejected_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.CheckConstraint("source IN ('http', 'watch', 'cli')", name=op.f('ck_rejections_source')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_rejections'))
    )
    op.create_index(op.f('ix_rejections_rejected_at'), 'rejections', ['rejected_at'], unique=False)
    op.create_table('runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_hash', sa.String(length=128), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('stetho_version', sa.String(length=40), nullable=False),
    sa.Column('model', sa.String(length=100), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_runs')),
    sa.UniqueConstraint('run_hash', name=op.f('uq_runs_run_hash'))
    )
    op.create_table('alerts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('asset_id', sa.Integer(), nullable=False),
    sa.Column('score_mode', sa.String(length=100), nullable=False),
    sa.Column('rule', sa.String(length=16), nullable=False),
    sa.Column('raised_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('acknowledged_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('acknowledged_by', sa.String(length=200), nullable=True),
    sa.CheckConstraint("rule IN ('k_of_n', 'drift')", name=op.f('ck_alerts_rule')),
    sa.ForeignKeyConstraint(['asset_id'], ['assets.id'], name=op.f('fk_alerts_asset_id_assets')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_alerts'))
    )
    op.create_index(op.f('ix_alerts_acknowledged_at_raised_at'), 'alerts', ['acknowledged_at', 'raised_at'], unique=False)
    op.create_index(op.f('ix_alerts_asset_id_score_mode_raised_at'), 'alerts', ['asset_id', 'score_mode', 'raised_at'], unique=False)
    op.create_table('recordings',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('asset_id', sa.Integer(), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('recorded_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('duration_s', sa.Float(), nullable=False),
    sa.Column('sample_rate', sa.Integer(), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.CheckConstraint("source IN ('http', 'watch', 'cli')", name=op.f('ck_recordings_source')),
    sa.CheckConstraint('duration_s >= 0', name=op.f('ck_recordings_duration')),
    sa.CheckConstraint('sample_rate > 0', name=op.f('ck_recordings_sample_rate')),
    sa.ForeignKeyConstraint(['asset_id'], ['assets.id'], name=op.f('fk_recordings_asset_id_assets')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_recordings')),
    sa.UniqueConstraint('asset_id', 'sha256', name=op.f('uq_recordings_asset_id_sha256'))
    )
    op.create_index(op.f('ix_recordings_asset_id_recorded_at'), 'recordings', ['asset_id', 'recorded_at'], unique=False)
    op.create_table('alert_recordings',
    sa.Column('alert_id', sa.Integer(), nullable=False),
    sa.Column('recording_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['alert_id'], ['alerts.id'], name=op.f('fk_alert_recordings_alert_id_alerts'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['recording_id'], ['recordings.id'], name=op.f('fk_alert_recordings_recording_id_recordings'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('alert_id', 'recording_id', name=op.f('pk_alert_recordings'))
    )
    op.create_index(op.f('ix_alert_recordings_recording_id'), 'alert_recordings', ['recording_id'], unique=False)
    op.create_table('verdicts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('recording_id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('score_mode', sa.String(length=100), nullable=False),
    sa.Column('score', sa.Float(), nullable=False),
    sa.Column('threshold', sa.Float(), nullable=False),
    sa.Column('decision', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['recording_id'], ['recordings.id'], name=op.f('fk_verdicts_recording_id_recordings'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_verdicts_run_id_runs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_verdicts')),
    sa.UniqueConstraint('recording_id', 'run_id', 'score_mode', name=op.f('uq_verdicts_recording_id_run_id_score_mode'))
    )
    op.create_index(op.f('ix_verdicts_run_id'), 'verdicts', ['run_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_verdicts_run_id'), table_name='verdicts')
    op.drop_table('verdicts')
    op.drop_index(op.f('ix_alert_recordings_recording_id'), table_name='alert_recordings')
    op.drop_table('alert_recordings')
    op.drop_index(op.f('ix_recordings_asset_id_recorded_at'), table_name='recordings')
    op.drop_table('recordings')
    op.drop_index(op.f('ix_alerts_asset_id_score_mode_raised_at'), table_name='alerts')
    op.drop_index(op.f('ix_alerts_acknowledged_at_raised_at'), table_name='alerts')
    op.drop_table('alerts')
    op.drop_table('runs')
    op.drop_index(op.f('ix_rejections_rejected_at'), table_name='rejections')
    op.drop_table('rejections')
    op.drop_table('assets')
