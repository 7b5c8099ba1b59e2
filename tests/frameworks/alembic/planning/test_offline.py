"""Offline SQL through the project's env.py: no database needed."""

from __future__ import annotations

from support import load_alembic_project as _project

from runner.frameworks.alembic.planning.offline import (
    downgrade_template,
    offline_sql,
    split_by_revision,
)


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


def test_split_by_revision_keeps_a_merge_revision_apart(make_project):
    project = make_project([("r1", "op.create_table('t', sa.Column('id', sa.Integer))")])
    project.add("a2", "r1", "op.create_table('a', sa.Column('id', sa.Integer))")
    project.add("b2", "r1", "op.create_table('b', sa.Column('id', sa.Integer))")
    project.add_modules([("m3", ("a2", "b2"), "def upgrade():\n    op.execute('SELECT 3')\n\n\n"
                                              "def downgrade():\n    pass\n")])
    sql = offline_sql(_project(project.ini), "base:heads")
    blocks = split_by_revision(sql)
    assert set(blocks) == {"r1", "a2", "b2", "m3"}
    assert "SELECT 3" in blocks["m3"] and "SELECT 3" not in blocks["a2"] + blocks["b2"]
    assert "CREATE TABLE a" in blocks["a2"] and "CREATE TABLE b" not in blocks["a2"]


def test_offline_sql_reuses_the_loaded_revision_files(make_project, monkeypatch):
    """A second ScriptDirectory would import every revision file again (0.5 s at 2,000)."""
    from alembic.script import ScriptDirectory

    project = make_project([("r1", "op.create_table('t', sa.Column('id', sa.Integer))")])
    project.add("r2", "r1", "op.add_column('t', sa.Column('c', sa.Text))")
    loaded = _project(project.ini)

    def reload(*_args, **_kwargs):
        raise AssertionError("offline_sql built a second ScriptDirectory")

    monkeypatch.setattr(ScriptDirectory, "from_config", reload)
    sql = offline_sql(loaded, "r1:r2")
    assert "Running upgrade r1 -> r2" in sql and "ADD COLUMN c" in sql
    assert "CREATE TABLE t" not in sql  # the range starts after r1
    down = offline_sql(loaded, "r2:r1", downgrade=True)
    assert "Running downgrade r2 -> r1" in down
