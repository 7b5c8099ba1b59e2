"""The seam: neither framework's path imports the other's framework."""

from __future__ import annotations

import subprocess
import sys

from support import EXAMPLE, REPO


def _modules_after(code: str, cwd: str) -> set[str]:
    report = "\nimport sys\nprint('MODULES:', *(m for m in sys.modules if m in FRAMEWORKS))"
    out = subprocess.run([sys.executable, "-c", "FRAMEWORKS = ('django', 'alembic')\n" + code
                          + report],
                         capture_output=True, text=True, cwd=cwd, check=True)
    line = next(x for x in out.stdout.splitlines() if x.startswith("MODULES:"))
    return set(line.split()[1:])


def test_import_runner_and_the_alembic_path_never_import_django():
    code = ("import runner, runner.main\nfrom runner.main import main\n"
            f"main(['plan', '-c', {str(EXAMPLE / 'alembic.ini')!r}, '--lint', 'off', "
            "'--log-format', 'json'], configure_logging=False)")
    assert "django" not in _modules_after(code, str(REPO))


def test_the_django_path_never_imports_alembic(tmp_path):
    # A database that does not exist (exit 2) after django.setup() and the migration graph.
    code = ("from runner.main import main\n"
            "main(['upgrade', '--framework', 'django', '--settings', 'mysite.settings', "
            "'--database-url', 'postgresql://nobody@127.0.0.1:1/none', '--connect-timeout', "
            "'0', '--log-format', 'json', '--artifacts-dir', "
            f"{str(tmp_path)!r}], configure_logging=False)\nimport django.conf\n")
    found = _modules_after(code, str(REPO / "examples" / "django"))
    assert found == {"django"}


def test_django_verify_never_imports_alembic():
    # Its scratch database cannot be made (no server there: exit 7), after the command's
    # modules are imported.
    code = ("from runner.main import main\n"
            "main(['verify', '--framework', 'django', '--settings', 'mysite.settings', "
            "'--database-url', 'postgresql://nobody@127.0.0.1:1/none', '--connect-timeout', "
            "'0', '--log-format', 'json'], configure_logging=False)\n")
    assert "alembic" not in _modules_after(code, str(REPO / "examples" / "django"))
