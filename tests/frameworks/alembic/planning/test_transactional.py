"""Which revisions are not transactional, from their source and offline SQL (no database)."""

from __future__ import annotations

import pytest

from runner.frameworks.alembic.planning.transactional import non_transactional_reasons


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


@pytest.mark.parametrize("text", [
    '"""Improves vacuum performance; we COMMIT to it, CONCURRENTLY with the app."""',
    "# VACUUM the table afterwards, CONCURRENTLY: op.execute('COMMIT')",
])
def test_docstrings_and_comments_are_not_code(text):
    source = (f"{text}\nimport sqlalchemy as sa\nfrom alembic import op\n\n\n"
              f"def upgrade():\n    {text}\n    op.add_column('t', sa.Column('c', sa.Text))"
              "  # then VACUUM\n")
    assert non_transactional_reasons(source) == []
    # The SQL a migration runs still counts, next to the same docstring or comment.
    assert non_transactional_reasons(source + '    op.execute("VACUUM ANALYZE t")\n') == [
        "VACUUM"]


def test_a_comment_in_the_offline_sql_is_no_marker():
    sql = "-- create it concurrently later; commit;\nALTER TABLE t ADD c int;\n"
    assert non_transactional_reasons("def upgrade():\n    pass\n", sql) == []
    # Source that does not tokenize is matched whole: the safe side.
    assert non_transactional_reasons('def upgrade(:\n    """vacuum\n') == ["VACUUM"]
