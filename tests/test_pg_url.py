"""--framework django parses its URL without SQLAlchemy (PgURL): the same parts, the same
refusals and the same masking as SQLAlchemy's URL on the Alembic path."""

from __future__ import annotations

import subprocess
import sys

import pytest

from runner.errors import UsageError
from runner.urls import libpq_params, mask, parse_pg_url, parse_url, psql_url

URLS = [
    "postgresql://app:s3cret@db.internal:6543/app",
    "postgres://app@db.internal/app",
    "postgresql+asyncpg://app:p%40ss%2Fw%3Ard@10.0.0.1/app?sslmode=require",
    "postgresql+psycopg2://u:pw@[::1]:5433/db?application_name=x&options=-c%20a%3Db",
    "postgresql://u@/db?host=/var/run/postgresql",
    "postgresql:///db",
]


@pytest.mark.parametrize("text", URLS)
def test_same_parts_and_masking_as_sqlalchemy(text):
    ours, theirs = parse_pg_url(text), parse_url(text)
    assert type(ours).__name__ == "PgURL"
    for part in ("drivername", "username", "password", "host", "port", "database"):
        assert getattr(ours, part) == getattr(theirs, part), part
    assert dict(ours.query) == dict(theirs.query)
    assert mask(ours) == mask(theirs)
    assert libpq_params(ours) == libpq_params(theirs)
    assert psql_url(ours) == psql_url(theirs)
    if theirs.password:
        assert theirs.password not in mask(ours) and theirs.password not in repr(ours)


@pytest.mark.parametrize(("text", "says"), [
    ("mysql://u:pw@h/db", "runs on PostgreSQL"),
    ("postgresql://u:p@ss@host/db", "unencoded '@'"),
    ("postgresql://u:pw@host:port/db", "malformed database URL"),
    ("not a url", "malformed database URL"),
])
def test_same_refusals_as_sqlalchemy(text, says):
    for parse in (parse_pg_url, parse_url):
        with pytest.raises(UsageError) as caught:
            parse(text)
        assert says in caught.value.message
        assert "pw" not in caught.value.message and "ss@" not in caught.value.message


def test_django_path_never_imports_sqlalchemy(tmp_path):
    """What the speed of --framework django rests on: the command, its URL and the upgrade
    module load without SQLAlchemy or alembic (a settings module that does not exist stops
    it at django.setup(), exit 2)."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "runner", "upgrade", "--framework", "django",
         "--settings", "no_such_settings_module", "--database-url", "postgresql://u:pw@h/db",
         "--artifacts-dir", str(tmp_path / "art")],
        capture_output=True, text=True, cwd=tmp_path, timeout=60, check=False)
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "runner.frameworks.django.upgrade" in imported
    assert not {m for m in imported if m.split(".")[0] in ("sqlalchemy", "alembic")}
    assert ":pw@" not in proc.stderr
