"""`safe-migrate status`: what it reads, through env.py's own connection or one of its own."""

from __future__ import annotations

import json

import psycopg
import pytest
from support import cli_args, libpq

from runner.db.lock import lock_key

TWO = [
    ("r1", "op.create_table('t1', sa.Column('id', sa.Integer, primary_key=True))"),
    ("r2", "op.create_table('t2', sa.Column('n', sa.Integer))"),
]

# Builds its own engine with another driver than the URL's (psycopg2, as many projects do).
ENV_PSYCOPG2 = '''
from alembic import context
from sqlalchemy import create_engine, pool
from sqlalchemy.engine import make_url

url = make_url(context.config.get_main_option("sqlalchemy.url"))
engine = create_engine(url.set(drivername="postgresql+psycopg2"), poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()
'''


def _status(run_cli, capsys, project, db, tmp_path):
    code = run_cli(cli_args(project, db, "--format", "json", command="status",
                            artifacts=tmp_path / "a"))
    assert code == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("env_py", ["generic", "psycopg2"])
def test_status_reads_revision_lock_holders_and_leftovers(env_py, make_project, db, sql,
                                                          run_cli, capsys, tmp_path, logs):
    project = make_project(TWO)
    if env_py == "psycopg2":
        (project.root / "env.py").write_text(ENV_PSYCOPG2)
    before = _status(run_cli, capsys, project, db, tmp_path)
    assert before["version_table_exists"] is False and before["pending"] == ["r1", "r2"]

    assert run_cli(cli_args(project, db, "r1", "--no-schema-diff", "--lint", "off",
                            artifacts=tmp_path / "a")) == 0
    sql("ALTER TABLE t1 ADD CONSTRAINT positive CHECK (id > 0) NOT VALID")
    key = lock_key(db.database, "public", "alembic_version")
    with psycopg.connect(libpq(db), autocommit=True,
                         application_name="another-runner") as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (key,))
        report = _status(run_cli, capsys, project, db, tmp_path)
    assert report["version_table_exists"] is True
    assert report["current"] == ["r1"] and report["pending"] == ["r2"]
    assert [h["application_name"] for h in report["lock_holders"]] == ["another-runner"]
    assert [(o["kind"], o["name"]) for o in report["invalid_objects"]] == [
        ("not_valid_constraint", "positive")]
    assert report["last_run"]["outcome"] == "success"
