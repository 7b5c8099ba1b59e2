"""probe: what env.py connects to, and reads on its own connection (real server)."""

from __future__ import annotations

import pytest
from support import load_alembic_project

from runner.errors import UsageError
from runner.frameworks.alembic.probe import probe


def _project(make_project, db):
    project = load_alembic_project(make_project([("r1", "pass")]).ini)
    project.config.set_main_option(
        "sqlalchemy.url", db.render_as_string(hide_password=False).replace("%", "%%"))
    return project


def test_read_runs_on_env_py_s_connection_in_the_database_asked_for(make_project, db):
    seen = []
    found = probe(_project(make_project, db), db, read=lambda conn, where: seen.append(
        (conn.exec_driver_sql("SELECT current_database()").scalar(), where.version_table)))
    assert seen == [(db.database, "alembic_version")] and found.heads == ()


def test_what_read_raises_comes_out_as_itself(make_project, db):
    def fail(conn, where):
        raise ValueError("catalog read failed")

    with pytest.raises(ValueError, match="catalog read failed"):
        probe(_project(make_project, db), db, read=fail)


def test_another_database_is_refused_before_read_runs(make_project, db, server):
    other = server.create_database()
    try:
        seen = []
        with pytest.raises(UsageError, match=r"env\.py connects to"):
            probe(_project(make_project, db), other, read=lambda *a: seen.append(a))
        assert seen == []
    finally:
        server.drop_database(other)
