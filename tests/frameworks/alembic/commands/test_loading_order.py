"""Alembic's loading order: revision modules that need what env.py sets up load as under bare
alembic (issue 14, item 2), and one that cannot be imported is named with its file and line."""

from __future__ import annotations

import io
import json
import os
import re
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import URL
from support import GENERIC_ENV, Project, Server, chained, cli_args, revision_header

from runner.main import main

# The app package lives in src/, which only env.py puts on sys.path, and its models refuse
# to load before env.py set the app up (as a Flask or a settings-driven app would).
APP_INIT = '''
CONFIGURED = None


def create_app(name):
    global CONFIGURED
    CONFIGURED = name
'''
APP_MODELS = '''
from {app} import CONFIGURED

if CONFIGURED is None:
    raise RuntimeError("create_app() first: the app is not set up")
TABLE = "accounts_" + CONFIGURED
'''
APP_ENV_SETUP = '''
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))
import {app}

{app}.create_app("app")
'''
# alembic reads version_locations before env.py runs: an env.py that moves it changes the
# ScriptDirectory itself (context.script), which bare alembic honours.
VERSION_LOCATIONS_SETUP = '''
import os

from alembic import context as _context

_context.script.version_locations = [
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "elsewhere")]
'''
USES_APP = '''
import {app}.models as models


def upgrade():
    op.create_table(models.TABLE, sa.Column("id", sa.Integer, primary_key=True),
                    sa.Column("email", sa.Text))


def downgrade():
    op.drop_table(models.TABLE)
'''
CONCURRENT_INDEX = '''
import {app}.models as models


def upgrade():
    with op.get_context().autocommit_block():
        op.create_index("ix_email", models.TABLE, ["email"], postgresql_concurrently=True)


def downgrade():
    with op.get_context().autocommit_block():
        op.drop_index("ix_email", table_name=models.TABLE, postgresql_concurrently=True)
'''
ADD_COLUMN = '''
import {app}.models as models


def upgrade():
    op.add_column(models.TABLE, sa.Column("nick", sa.Text))


def downgrade():
    op.drop_column(models.TABLE, "nick")
'''


def _project(make_project: Callable[..., Project], db: URL, style: str) -> tuple[Project, str]:
    """A three-revision history whose modules import the app at module top."""
    app = f"app_{uuid.uuid4().hex[:10]}"  # in-process runs share sys.modules: one per test
    project = make_project([], url=db)
    src = project.root / "src" / app
    src.mkdir(parents=True)
    (src / "__init__.py").write_text(APP_INIT)
    (src / "models.py").write_text(APP_MODELS.format(app=app))
    setup = APP_ENV_SETUP.format(app=app)
    if style == "version-locations":
        setup += VERSION_LOCATIONS_SETUP
    (project.root / "env.py").write_text(setup + GENERIC_ENV)
    modules = chained([(rev, text.format(app=app)) for rev, text in (
        ("r1", USES_APP), ("r2", CONCURRENT_INDEX), ("r3", ADD_COLUMN))])
    if style == "version-locations":  # alembic.ini's own versions/ stays empty
        (project.root / "elsewhere").mkdir()
        _write_modules(project.root / "elsewhere", modules)
    else:
        project.add_modules(modules)
    return project, app


def _write_modules(folder: Path, modules: list[tuple[str, str | None, str]]) -> None:
    for rev, down, text in modules:
        (folder / f"{rev}.py").write_text(revision_header(rev, down) + text)


def _fresh_process(app: str) -> None:
    """Undo what env.py did to this process (sys.path, the imported app): each command below
    must find the app unloadable until its own env.py run, as in a fresh process."""
    sys.path[:] = [p for p in sys.path if not (p.endswith(f"{os.sep}src")
                                               and Path(p, app).is_dir())]
    for name in [m for m in sys.modules if m == app or m.startswith(f"{app}.")]:
        del sys.modules[name]


def _json_out(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("style", ["app", "version-locations"])
def test_revisions_that_need_env_py_setup_load_as_under_bare_alembic(
        style: str, make_project: Callable[..., Project], db: URL, server: Server,
        sql: Callable[..., list[tuple[Any, ...]]], run_cli: Callable[[list[str]], int],
        capsys: pytest.CaptureFixture[str], tmp_path: Path,
        logs: list[dict[str, Any]]) -> None:
    project, app = _project(make_project, db, style)
    artifacts = tmp_path / "artifacts"

    # plan: the pending list, each one's offline SQL, the transactional marker, lint.
    assert run_cli(cli_args(project, db, "--format", "json", command="plan")) == 0
    plan = _json_out(capsys)
    assert [p["revision"] for p in plan["pending"]] == ["r1", "r2", "r3"]
    assert [p["transactional"] for p in plan["pending"]] == [True, False, True]
    assert "CREATE TABLE accounts_app" in plan["pending"][0]["sql"]
    assert plan["allowed"] is True

    _fresh_process(app)
    assert run_cli(cli_args(project, db, "r2", "--no-schema-diff",
                            artifacts=artifacts)) == 0
    assert sql("SELECT version_num FROM alembic_version") == [("r2",)]
    assert sql("SELECT indisvalid FROM pg_index WHERE indexrelid = 'ix_email'::regclass") == [
        (True,)]
    done = [e for e in logs if e["event"] == "migration.done"]
    assert [e["revision"] for e in done] == ["r1", "r2"]

    _fresh_process(app)
    assert run_cli(cli_args(project, db, "--format", "json", command="status")) == 0
    status = _json_out(capsys)
    assert status["current"] == ["r2"] and status["pending"] == ["r3"]
    assert status["heads"] == ["r3"]

    # check-not-behind: a target behind the database is refused (exit 3), nothing runs.
    _fresh_process(app)
    assert run_cli(cli_args(project, db, "r1", "--no-schema-diff",
                            artifacts=artifacts)) == 3
    assert sql("SELECT version_num FROM alembic_version") == [("r2",)]

    _fresh_process(app)
    assert run_cli(cli_args(project, db, "--no-schema-diff", artifacts=artifacts)) == 0
    assert sql("SELECT version_num FROM alembic_version") == [("r3",)]

    # verify: the stairway on a scratch database of the same server.
    _fresh_process(app)
    logs.clear()
    assert main(["verify", "-c", str(project.ini), "--database-url",
                 server.url.render_as_string(hide_password=False)],
                configure_logging=False) == 0
    steps = [(e["revision"], e["direction"]) for e in logs if e["event"] == "verify.step"
             and e["ok"]]
    assert len(steps) == 9 and steps[0][0] == "r1" and steps[-1][0] == "r3"

    # Bare alembic renders the same history (the reference all the above matches).
    _fresh_process(app)
    rendered = io.StringIO()
    command.upgrade(Config(str(project.ini), output_buffer=rendered), "r3", sql=True)
    assert "CREATE INDEX CONCURRENTLY ix_email" in rendered.getvalue()
    _fresh_process(app)


def _error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines()
             if line.startswith("safe-migrate: error:") or '"event": "error"' in line]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize("command_name", ["upgrade", "plan", "status", "verify"])
@pytest.mark.parametrize("broken", ["missing-module", "syntax-error"])
def test_a_revision_that_cannot_be_imported_is_named_with_file_and_line(
        command_name: str, broken: str, make_project: Callable[..., Project], db: URL,
        sql: Callable[..., list[tuple[Any, ...]]], run_cli: Callable[[list[str]], int],
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    project = make_project([("r1", "op.create_table('t1', sa.Column('id', sa.Integer))")],
                           url=db)
    body = ("import no_such_module_h14  # the app it needed is gone\n" if broken ==
            "missing-module" else "def upgrade(:\n")
    path = project.root / "versions" / "r2.py"
    path.write_text(f"revision = 'r2'\ndown_revision = 'r1'\n\n{body}")
    capsys.readouterr()

    code = run_cli(cli_args(project, db, "--no-schema-diff", command=command_name,
                            artifacts=tmp_path / "a")
                   if command_name == "upgrade" else cli_args(project, db, command=command_name))

    line = _error_line(capsys.readouterr().err)
    assert code == 3, line
    assert re.search(rf"{re.escape(str(path))}:4\b", line), line
    assert ("ModuleNotFoundError" if broken == "missing-module" else "SyntaxError") in line
    assert sql("SELECT to_regclass('t1')") == [(None,)]  # nothing ran


def test_version_locations_set_through_the_config_in_env_py_is_explained(
        make_project: Callable[..., Project], db: URL, run_cli: Callable[[list[str]], int],
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """alembic reads version_locations before env.py runs: config.set_main_option there finds
    nothing under bare alembic either (it silently does nothing); we say why (exit 2)."""
    project = make_project([], url=db)
    (project.root / "elsewhere").mkdir()
    _write_modules(project.root / "elsewhere", chained([("r1", "\ndef upgrade():\n    pass\n")]))
    setup = ('import os\nfrom alembic import context as _c\n_c.config.set_main_option('
             '"version_locations", os.path.join(os.path.dirname(os.path.abspath(__file__)), '
             '"elsewhere"))\n')
    (project.root / "env.py").write_text(setup + GENERIC_ENV)
    capsys.readouterr()
    code = run_cli(cli_args(project, db, "--no-schema-diff", artifacts=tmp_path / "a"))
    line = _error_line(capsys.readouterr().err)
    assert code == 2, line
    assert "context.script.version_locations" in line


def test_no_revision_module_is_imported_before_env_py_ran(
        make_project: Callable[..., Project], db: URL, run_cli: Callable[[list[str]], int],
        sql: Callable[..., list[tuple[Any, ...]]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A module that imports without error before env.py's setup, but reads what env.py
    prepares (settings from the environment): imported early, it would be cached wrong."""
    app = f"settings_{uuid.uuid4().hex[:10]}"
    src = tmp_path / "importable"
    src.mkdir()
    variable = app.upper()
    (src / f"{app}.py").write_text(
        f"import os\nTABLE = os.environ.get({variable!r}, 'imported_too_early')\n")
    monkeypatch.syspath_prepend(str(src))  # importable with or without env.py
    project = make_project([], url=db)
    (project.root / "env.py").write_text(
        f"import os\nos.environ[{variable!r}] = 'after_env_py'\n" + GENERIC_ENV)
    project.add_modules(chained([("r1", f"""
from {app} import TABLE


def upgrade():
    op.create_table(TABLE, sa.Column("id", sa.Integer))
""")]))
    try:
        assert run_cli(cli_args(project, db, "--no-schema-diff",
                                artifacts=tmp_path / "a")) == 0
    finally:
        os.environ.pop(variable, None)
        sys.modules.pop(app, None)
    assert sql("SELECT to_regclass('after_env_py') IS NOT NULL, "
               "to_regclass('imported_too_early') IS NULL") == [(True, True)]
