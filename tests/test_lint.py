"""runner.lint: squawk over each revision's offline SQL, mapped back to revision files."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import CREATE_ACCOUNTS, INDEX_EMAIL, MakeProject, chained, load_alembic_project

from runner import lint
from runner.errors import UsageError
from runner.planning.history import load_history

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
    with pytest.raises(UsageError, match="pip install squawk-cli"):
        lint.find_squawk()
