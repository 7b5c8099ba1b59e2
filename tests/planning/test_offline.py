"""Offline SQL through the project's env.py: no database needed."""

from __future__ import annotations

from support import load_alembic_project as _project

from runner.planning.offline import downgrade_template


def test_downgrade_template_is_the_revisions_own_offline_sql(make_project):
    project = make_project([("r1", "op.create_table('t', sa.Column('id', sa.Integer))")])
    project.add("r2", "r1", "op.add_column('t', sa.Column('c', sa.Text))",
                "op.drop_column('t', 'c')")
    sql = downgrade_template(_project(project.ini), "r2", "r1")
    assert "Running downgrade r2 -> r1" in sql and "DROP COLUMN c" in sql
    assert "r1 -> " not in sql  # only the failed revision, not the whole history


def test_downgrade_template_of_a_merge_revision_is_left_to_a_person(make_project):
    project = make_project([("r1", "pass")])
    sql = downgrade_template(_project(project.ini), "m1", ["a1", "b1"])
    assert sql.startswith("-- m1 is a merge revision")
