"""runner.lint: squawk over each revision's offline SQL, mapped back to revision files."""

from __future__ import annotations

import shutil
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import pytest
from support import (
    CREATE_ACCOUNTS,
    INDEX_EMAIL,
    READS_ROWS,
    REPO,
    MakeProject,
    chained,
    load_alembic_project,
)

from runner import lint
from runner.errors import LintUnavailableError, UsageError
from runner.frameworks.alembic.planning.history import load_history

REQUIRED = '''
def upgrade():
    op.add_column("accounts", sa.Column("nick", sa.Text, nullable=False))


def downgrade():
    op.drop_column("accounts", "nick")
'''


def _lint(ini: Path) -> list[lint.Finding]:
    project = load_alembic_project(ini)
    history = load_history(project.script)
    return lint.lint_pending(project, history, [s.revision for s in history.revisions])


def test_findings_are_mapped_to_the_revision_file(make_project: MakeProject) -> None:
    revisions = chained([("r1", CREATE_ACCOUNTS), ("r2", INDEX_EMAIL), ("r3", REQUIRED)])
    ini = make_project([]).add_modules(revisions).ini
    findings = _lint(ini)
    by_rule = {(f.revision, f.rule): f for f in findings}
    index = by_rule[("r2", "require-concurrent-index-creation")]
    assert index.path.endswith("/r2.py")
    assert index.line == 1 and index.level == "warning" and index.help
    required = by_rule[("r3", "adding-required-field")]
    assert required.path.endswith("/r3.py")
    # alembic's own bookkeeping (alembic_version VARCHAR, BEGIN/COMMIT) is not linted,
    # nor are the rules the runner makes moot (it sets lock_timeout itself).
    rules = {f.rule for f in findings}
    assert not rules & set(lint.EXCLUDED_RULES)
    assert "prefer-text-field" not in rules
    assert all(f.revision in ("r1", "r2", "r3") for f in findings)


def test_ignore_comment_silences_one_rule_for_one_revision(make_project: MakeProject) -> None:
    silenced = "# safe-migrate: ignore=adding-required-field\n" + REQUIRED
    ini = make_project([]).add_modules(
        chained([("r1", CREATE_ACCOUNTS), ("r2", INDEX_EMAIL), ("r3", silenced)])).ini
    rules = {(f.revision, f.rule) for f in _lint(ini)}
    assert ("r3", "adding-required-field") not in rules
    assert ("r2", "require-concurrent-index-creation") in rules


def test_squawk_ignore_comment_in_op_execute(make_project: MakeProject) -> None:
    body = '''
def upgrade():
    op.execute("-- squawk-ignore require-concurrent-index-creation\\n"
               "CREATE INDEX ix_a ON accounts (email)")


def downgrade():
    op.execute("DROP INDEX ix_a")
'''
    ini = make_project([]).add_modules(chained([("r1", CREATE_ACCOUNTS), ("r2", body)])).ini
    assert ("r2", "require-concurrent-index-creation") not in {
        (f.revision, f.rule) for f in _lint(ini)}


def test_autocommit_block_sql_is_linted_outside_the_transaction(make_project: MakeProject) -> None:
    body = '''
def upgrade():
    with op.get_context().autocommit_block():
        op.create_index("ix_a", "accounts", ["email"], postgresql_concurrently=True)


def downgrade():
    op.drop_index("ix_a", table_name="accounts")
'''
    ini = make_project([]).add_modules(chained([("r1", CREATE_ACCOUNTS), ("r2", body)])).ini
    rules = {(f.revision, f.rule) for f in _lint(ini)}
    # CONCURRENTLY outside the transaction is fine; without IF NOT EXISTS a retry after a
    # partial apply fails, which squawk's prefer-robust-stmts says.
    assert ("r2", "require-concurrent-index-creation") not in rules
    assert ("r2", "prefer-robust-stmts") in rules
    assert ("r2", "transaction-nesting") not in rules


def test_unwrap_both_offline_layouts() -> None:
    per_migration = ["ALTER TABLE a ADD COLUMN b TEXT;", "UPDATE alembic_version SET x;",
                     "COMMIT;", "BEGIN;"]
    assert lint.unwrap(per_migration) == per_migration[:2]
    single = ["COMMIT;", "CREATE INDEX CONCURRENTLY i ON a (b);", "BEGIN;",
              "UPDATE alembic_version SET x;", "COMMIT;"]
    assert lint.unwrap(single) == single[:4]


@pytest.mark.usefixtures("no_squawk")
def test_missing_squawk_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="squawk not found"):
        lint.find_squawk()


# -- unrenderable revisions, rule sets, statements (issue 14) -----------------------------------

STYLE = '''
def upgrade():
    op.create_table("events", sa.Column("id", sa.Integer, primary_key=True),
                    sa.Column("kind", sa.String(20)), sa.Column("at", sa.DateTime))


def downgrade():
    op.drop_table("events")
'''


def _lint_mode(ini: Path, mode: str = "warn", rules: str = "safety") -> list[lint.Finding]:
    project = load_alembic_project(ini)
    history = load_history(project.script)
    return lint.lint_pending(project, history, [s.revision for s in history.revisions],
                             mode=mode, rules=rules)


def test_an_unrenderable_revision_is_a_finding_and_the_others_are_still_linted(
        make_project: MakeProject) -> None:
    ini = make_project([]).add_modules(chained(
        [("r1", CREATE_ACCOUNTS), ("r2", READS_ROWS), ("r3", INDEX_EMAIL)])).ini
    findings = _lint_mode(ini, "error")
    by_rule = {(f.revision, f.rule): f for f in findings}
    bad = by_rule[("r2", lint.UNRENDERABLE)]
    assert bad.level == "error" and bad.path.endswith("/r2.py")
    assert "AttributeError: 'NoneType' object has no attribute 'scalar'" in bad.message
    assert ("r3", "require-concurrent-index-creation") in by_rule  # linted all the same
    assert [f.revision for f in findings] == sorted(f.revision for f in findings)
    assert _lint_mode(ini, "warn")[0].level == "warning"


def test_the_opt_out_silences_an_unrenderable_revision_only(make_project: MakeProject) -> None:
    opted_out = "# safe-migrate: ignore=unrenderable\n" + READS_ROWS
    ini = make_project([]).add_modules(chained(
        [("r1", CREATE_ACCOUNTS), ("r2", opted_out), ("r3", INDEX_EMAIL)])).ini
    rules = {(f.revision, f.rule) for f in _lint_mode(ini, "error")}
    assert rules == {("r3", "require-concurrent-index-creation")}


def test_each_of_several_unrenderable_revisions_is_named(make_project: MakeProject) -> None:
    ini = make_project([]).add_modules(chained(
        [("r1", CREATE_ACCOUNTS), ("r2", READS_ROWS), ("r3", INDEX_EMAIL), ("r4", READS_ROWS),
         ("r5", REQUIRED)])).ini
    rules = [(f.revision, f.rule) for f in _lint_mode(ini, "error")]
    assert rules == [("r2", "unrenderable"), ("r3", "require-concurrent-index-creation"),
                     ("r4", "unrenderable"), ("r5", "adding-required-field")]


def test_findings_name_the_statement(make_project: MakeProject) -> None:
    ini = make_project([]).add_modules(chained([("r1", CREATE_ACCOUNTS), ("r2", INDEX_EMAIL),
                                                ("r3", REQUIRED)])).ini
    by_rule = {f.rule: f for f in _lint_mode(ini)}
    index = by_rule["require-concurrent-index-creation"]
    assert index.statement == "CREATE INDEX ix_accounts_email ON accounts (email);"
    assert by_rule["adding-required-field"].statement == (
        "ALTER TABLE accounts ADD COLUMN nick TEXT NOT NULL;")


def test_style_rules_are_opt_in(make_project: MakeProject) -> None:
    ini = make_project([]).add_modules(chained([("r1", STYLE), ("r2", INDEX_EMAIL)])).ini
    default = {f.rule for f in _lint_mode(ini)}
    assert not default & {"prefer-bigint-over-int", "prefer-text-field", "prefer-timestamp-tz",
                          "prefer-identity"}
    assert "require-concurrent-index-creation" in default
    everything = {f.rule for f in _lint_mode(ini, rules="all")}
    assert {"prefer-bigint-over-int", "prefer-text-field", "prefer-timestamp-tz"} <= everything
    assert "require-concurrent-index-creation" in everything


def test_a_projects_squawk_toml_is_honoured(make_project: MakeProject) -> None:
    project = make_project([]).add_modules(chained([("r1", STYLE), ("r2", INDEX_EMAIL)]))
    (project.root / ".squawk.toml").write_text(
        'excluded_rules = ["require-concurrent-index-creation", "prefer-text-field"]\n'
        'excluded_paths = ["*.sql"]\n')  # the project's .sql files, not our rendered SQL
    rules = {f.rule for f in _lint_mode(project.ini)}
    assert "require-concurrent-index-creation" not in rules and "prefer-text-field" not in rules
    # Its list replaces our style exclusions: what it does not exclude is reported.
    assert "prefer-bigint-over-int" in rules
    # The rules the runner makes moot stay out whatever the file says.
    assert not rules & set(lint.EXCLUDED_RULES)


def test_a_broken_squawk_toml_makes_lint_unavailable(make_project: MakeProject) -> None:
    project = make_project([]).add_modules(chained([("r1", STYLE)]))
    (project.root / ".squawk.toml").write_text("excluded_rules = [\n")
    with pytest.raises(LintUnavailableError, match=r"\.squawk\.toml"):
        _lint_mode(project.ini)


def test_print_while_rendered_offline_is_an_event_not_stdout(
        make_project: MakeProject, logs: list[dict[str, Any]],
        capsys: pytest.CaptureFixture[str]) -> None:
    noisy = '''
def upgrade():
    print("renaming things, password=hunter2")
    op.add_column("accounts", sa.Column("nick", sa.Text))


def downgrade():
    pass
'''
    ini = make_project([]).add_modules(chained([("r1", CREATE_ACCOUNTS), ("r2", noisy)])).ini
    _lint_mode(ini)
    assert capsys.readouterr().out == ""
    printed = [e for e in logs if e["event"] == "offline.output"]
    assert [(e["revision"], e["output"]) for e in printed] == [
        ("r2", "renaming things, password=hunter2")]  # the output processors mask it


def test_a_plain_install_lints() -> None:
    """squawk-cli is a regular dependency, not an extra: `pip install safe-migrate` lints."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    project = pyproject["project"]
    assert any(dep.startswith("squawk-cli") for dep in project["dependencies"])
    assert "lint" in project["optional-dependencies"]  # safe-migrate[lint] still resolves


def test_a_stray_squawk_toml_above_the_temporary_directory_is_not_used(
        make_project: MakeProject, monkeypatch: pytest.MonkeyPatch) -> None:
    """squawk runs in a temporary directory and looks for a config from there up (/tmp, /):
    only the project's counts."""
    ini = make_project([]).add_modules(chained([("r1", CREATE_ACCOUNTS), ("r2", INDEX_EMAIL)])).ini
    stray = Path(tempfile.mkdtemp(prefix="sm-stray-"))
    try:
        (stray / ".squawk.toml").write_text('excluded_paths = ["*.sql"]\n')  # all of ours
        (stray / "inner").mkdir()
        monkeypatch.setattr(tempfile, "tempdir", str(stray / "inner"))
        assert ("r2", "require-concurrent-index-creation") in {
            (f.revision, f.rule) for f in _lint_mode(ini)}
    finally:
        shutil.rmtree(stray)
