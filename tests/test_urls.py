"""URL handling: pure, no database."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url

from runner.errors import UsageError
from runner.urls import libpq_kwargs, libpq_params, mask, mask_text, parse_url


def test_async_and_other_drivers_run_through_sync_psycopg():
    for text in ("postgresql+asyncpg://u:p@h/db", "postgres://u@h/db",
                 "postgresql+psycopg2://u@h/db"):
        assert parse_url(text).drivername == "postgresql+psycopg"


@pytest.mark.parametrize("text", ["not a url", "mysql://u:p@h/db"])
def test_bad_urls_are_usage_errors_without_the_password(text):
    with pytest.raises(UsageError) as err:
        parse_url(text)
    assert ":p@" not in err.value.message


def test_masking():
    url = parse_url("postgresql://u:Secret9@h:5/db")
    assert "Secret9" not in mask(url)
    assert mask_text("failed for postgresql://u:Secret9@h/db and password=Secret9 x") == (
        "failed for postgresql://u:***@h/db and password=*** x")


def test_libpq_kwargs_url_parts_win_over_the_query():
    url = make_url("postgresql://u:pw@h:5433/db?sslmode=require&host=ignored")
    assert libpq_kwargs(url) == {"host": "h", "port": "5433", "user": "u", "password": "pw",
                                 "dbname": "db", "sslmode": "require"}


def test_libpq_params_keep_the_password_apart_for_child_processes():
    url = make_url("postgresql://u:pw@/db?host=/run/pg&options=-c%20search_path%3Dapp")
    public, secret = libpq_params(url)
    assert public == {"PGHOST": "/run/pg", "PGUSER": "u", "PGDATABASE": "db",
                      "PGOPTIONS": "-c search_path=app"}
    assert secret == {"PGPASSWORD": "pw"}
    assert "pw" not in public.values()


def test_a_password_with_an_unencoded_at_is_refused_without_its_tail():
    with pytest.raises(UsageError) as err:
        parse_url("postgresql://u:p@ss@dbhost/db")
    message = err.value.message
    assert "ss@" not in message and "p@" not in message
    assert "postgresql://u:***@dbhost/db" in message and "%40" in message


def test_an_unparsable_port_is_a_usage_error_with_the_url_masked():
    with pytest.raises(UsageError) as err:
        parse_url("postgresql://u:Secret9@h:notaport/db")
    assert "Secret9" not in err.value.message


@pytest.mark.parametrize(("text", "expected"), [
    ("cannot connect to postgresql://u:p@ss@dbhost/db",
     "cannot connect to postgresql://u:***@dbhost/db"),
    ('could not translate host name "ss@dbhost" to address',
     'could not translate host name "***@dbhost" to address'),
    ("failed to resolve host 'ss@dbhost': [Errno -2] Name or service not known",
     "failed to resolve host '***@dbhost': [Errno -2] Name or service not known"),
    ("cannot connect to 'postgresql://u:Secret9@dbhost/db'",
     "cannot connect to 'postgresql://u:***@dbhost/db'"),
    ("ALTER ROLE app PASSWORD 'Secret9'", "ALTER ROLE app PASSWORD '***'"),
])
def test_mask_text_leaves_no_part_of_a_password(text, expected):
    assert mask_text(text) == expected


def test_mask_of_a_url_whose_password_took_the_host():
    assert mask(make_url("postgresql://u:p@ss@dbhost/db")) == "postgresql://u:***@dbhost/db"


def test_an_at_in_the_password_of_alembic_ini_never_shows_its_tail(make_project, capsys):
    """The URL comes from alembic.ini, so env.py connects with it: the driver's error names
    the host it tried, which holds the password's tail."""
    from runner.main import main

    project = make_project([("r1", "pass")])
    ini = project.ini.read_text().replace("postgresql+psycopg://nobody@127.0.0.1:1/none",
                                          "postgresql+psycopg://u:Sec@ret9@127.0.0.1:1/none")
    project.ini.write_text(ini)
    code = main(["plan", "-c", str(project.ini), "--log-format", "json", "--connect-timeout",
                 "0"], configure_logging=False)
    captured = capsys.readouterr()
    assert code in (2, 7)
    assert "ret9" not in captured.err + captured.out and "Sec" not in captured.err


@pytest.mark.parametrize("url", ["postgresql://u:Sec@ret9@dbhost/db",
                                 "postgresql://u:Secret9@dbhost:port/db"])
def test_an_unparsable_database_url_is_exit_2_masked(url, tmp_path, capsys):
    from runner.main import main

    code = main(["plan", "-c", str(tmp_path / "alembic.ini"), "--database-url", url,
                 "--log-format", "json"], configure_logging=False)
    err = capsys.readouterr().err
    assert code == 2 and "malformed database URL" in err
    assert "ret9" not in err and "Sec" not in err
