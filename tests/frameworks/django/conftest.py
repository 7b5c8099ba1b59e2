"""Django projects for the tests: a copy of examples/django per test, run through the CLI in
a child process (Django's settings are process-global)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import URL
from support import REPO, json_events, spawn

pytest.importorskip("django")

EXAMPLE = REPO / "examples" / "django"


@dataclass
class DjangoProject:
    root: Path
    db: URL
    artifacts: Path

    def migration(self, app: str, name: str, text: str) -> Path:
        path = self.root / app / "migrations" / f"{name}.py"
        path.write_text(text)
        return path

    def args(self, command: str, *extra: str) -> list[str]:
        artifacts = [] if command == "verify" else ["--artifacts-dir", str(self.artifacts)]
        return [command, "--framework", "django", "--settings", "mysite.settings",
                "--database-url", self.db.render_as_string(hide_password=False),
                "--log-format", "json", *artifacts, *extra]

    def spawn(self, command: str, *extra: str) -> subprocess.Popen[str]:
        return spawn(self.args(command, *extra), cwd=self.root)

    def run(self, command: str, *extra: str, timeout: float = 120) -> Result:
        proc = self.spawn(command, *extra)
        _, err = proc.communicate(timeout=timeout)
        return Result(proc.returncode, json_events(err), err)


@dataclass
class Result:
    code: int
    events: list[dict[str, Any]]
    stderr: str

    def named(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == name]

    def done(self) -> dict[str, Any]:
        found = self.named("run.done")
        assert found, self.stderr[-2000:]
        return found[-1]

    def error(self) -> str:
        found = self.named("error")
        assert found, self.stderr[-2000:]
        return str(found[-1]["message"])


@pytest.fixture
def django_project(tmp_path: Path, db: URL) -> DjangoProject:
    root = tmp_path / "project"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns("__pycache__"))
    return DjangoProject(root, db, tmp_path / "artifacts")
