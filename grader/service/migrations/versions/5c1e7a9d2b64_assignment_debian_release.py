"""the Debian release (kernel) an assignment is graded on

Revision ID: 5c1e7a9d2b64
Revises: ded35cc5b75a
Create Date: 2026-12-02 20:55:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '5c1e7a9d2b64'
down_revision = 'ded35cc5b75a'
branch_labels = None
depends_on = None


def upgrade():
    # NULL: the service's POOL_SUITE, as for every assignment made before this column
    with op.batch_alter_table('assignments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('suite', sa.String(length=20), nullable=True))


def downgrade():
    with op.batch_alter_table('assignments', schema=None) as batch_op:
        batch_op.drop_column('suite')
