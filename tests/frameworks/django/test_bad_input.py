"""Bad input with --framework django: one line and a documented exit code, never a traceback."""

from __future__ import annotations

import pytest
from support import json_events, spawn


@pytest.mark.parametrize(("extra", "code", "message"), [
    (["--settings", "mysite.nope"], 2, "--settings mysite.nope: cannot import it"),
    (["--database", "reports"], 2, "--database reports: not in DATABASES"),
    (["nosuchapp"], 3, "app 'nosuchapp' has no migrations"),
    (["shop:0099"], 3, "shop has no migration '0099'"),
    (["shop:zero"], 3, "upgrade never moves backwards"),
    (["-x", "tenant=a"], 2, "-x: alembic's options, not used with --framework django"),
])
def test_bad_input_is_one_line_and_its_exit_code(django_project, extra, code, message):
    args = django_project.args("upgrade", "--no-schema-diff", *extra)
    if "--settings" in extra:  # the later --settings wins, as argparse does
        args = [a for a in args if a != "mysite.settings"]
        args.remove("--settings")
    child = spawn(args, cwd=django_project.root)
    _, err = child.communicate(timeout=120)
    assert child.returncode == code, err[-2000:]
    assert "Traceback" not in err
    errors = [e for e in json_events(err) if e["event"] == "error"]
    assert len(errors) == 1 and message in errors[0]["message"]


def test_a_failing_app_import_is_a_usage_error(django_project):
    (django_project.root / "shop" / "models.py").write_text("raise RuntimeError('broken app')\n")
    result = django_project.run("upgrade", "--no-schema-diff")
    assert result.code == 2, result.stderr[-2000:]
    assert "django.setup() with mysite.settings failed: RuntimeError: broken app" in (
        result.error())
    assert "Traceback" not in result.stderr


def test_an_unknown_framework_is_a_usage_error(django_project):
    result = django_project.run("upgrade", "--framework", "flask")
    assert result.code == 2 and "--framework: expected one of alembic, django" in result.error()
