"""runner.db.failures.error_info: where a migration raised, and PostgreSQL's
DETAIL and HINT, from the exception alone (no database)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import sqlalchemy.exc

from runner.db.failures import error_info


def _raise_from(path: Path, source: str, exc: BaseException, **names: object) -> BaseException:
    """Run `source` as if it were the file `path` (its frames name it), raising `exc`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
    scope = {"exc": exc, **names}
    exec(compile(source, str(path), "exec"), scope)
    with pytest.raises(BaseException) as caught:
        scope["upgrade"]()  # type: ignore[operator]
    return caught.value


def test_the_deepest_frame_in_the_revision_file_is_where_it_raised(tmp_path):
    path = tmp_path / "versions" / "r2.py"
    exc = _raise_from(path, "def step():\n    raise exc\n\n\ndef upgrade():\n    step()\n",
                      RuntimeError("boom"))
    info = error_info(exc, str(path))
    assert (info["file"], info["line"]) == (str(path), 2)
    assert info["message"] == "boom" and info["detail"] is None and info["hint"] is None


def test_a_helper_beside_the_revision_is_the_fallback(tmp_path):
    helper = tmp_path / "versions" / "helpers.py"
    exc = _raise_from(helper, "def upgrade():\n\n    raise exc\n", ValueError("bad"))
    info = error_info(exc, str(tmp_path / "versions" / "r2.py"))
    assert (info["file"], info["line"]) == (str(helper), 3)


def test_a_failure_outside_the_versions_directory_has_no_location(tmp_path):
    exc = _raise_from(tmp_path / "lib" / "x.py", "def upgrade():\n    raise exc\n",
                      ValueError("bad"))
    info = error_info(exc, str(tmp_path / "versions" / "r2.py"))
    assert (info["file"], info["line"]) == (None, None)


class _Psycopg(Exception):
    sqlstate = "23505"
    diag = SimpleNamespace(message_detail="Key (email)=(a@b) already exists.",
                           message_hint="password=hunter2 is not a hint")


class _Asyncpg(Exception):
    sqlstate = "23505"
    detail = "Key (id)=(1) already exists."
    hint = None


@pytest.mark.parametrize(("orig", "detail", "hint"), [
    (_Psycopg("duplicate key"), "Key (email)=(a@b) already exists.", "password=*** is not a hint"),
    (_Asyncpg("duplicate key"), "Key (id)=(1) already exists.", None),
])
def test_detail_and_hint_come_from_the_dbapi_error_masked(orig, detail, hint):
    info = error_info(sqlalchemy.exc.IntegrityError("INSERT ...", {}, orig), None)
    assert (info["sqlstate"], info["message"]) == ("23505", "duplicate key")
    assert (info["detail"], info["hint"]) == (detail, hint)


def test_detail_through_a_driver_s_cause_chain():
    dbapi = _Asyncpg("translated")
    try:
        try:
            raise dbapi
        except _Asyncpg as inner:
            raise RuntimeError("adapter error") from inner
    except RuntimeError as outer:
        info = error_info(outer, None)
    assert info["detail"] == "Key (id)=(1) already exists."
