"""Which revisions are not transactional, from their source and offline SQL (no database)."""

from __future__ import annotations

import pytest

from runner.planning.transactional import non_transactional_reasons


@pytest.mark.parametrize(("source", "reason"), [
    ("with op.get_context().autocommit_block():", "autocommit_block()"),
    ("op.execute('COMMIT')", "raw COMMIT"),
    ('op.execute("commit;")', "raw COMMIT"),
    ("op.create_index('ix', 't', ['c'], postgresql_concurrently=True)",
     "CREATE INDEX CONCURRENTLY"),
    ("op.execute('create index Concurrently ix on t (c)')", "CONCURRENTLY"),
    ("op.execute('Vacuum t')", "VACUUM"),
])
def test_each_source_marker_is_found_in_any_case(source, reason):
    assert reason in non_transactional_reasons(f"def upgrade():\n    {source}\n")


@pytest.mark.parametrize(("sql", "reason"), [
    ("ALTER TABLE t ADD c int;\ncommit;\n", "COMMIT inside the step"),
    ("REINDEX INDEX concurrently ix;\n", "CONCURRENTLY"),
])
def test_markers_in_the_offline_sql(sql, reason):
    assert non_transactional_reasons("def upgrade():\n    pass\n", sql) == [reason]


def test_an_ordinary_revision_is_transactional():
    source = ("def upgrade():\n    op.create_table('commits', sa.Column('id', sa.Integer))\n"
              "    op.add_column('t', sa.Column('vacuumed_at', sa.DateTime))\n")
    assert non_transactional_reasons(source, "CREATE TABLE commits (id INTEGER);\n") == []
