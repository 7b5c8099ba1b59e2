"""The user's Alembic project: alembic.ini + script directory, loaded as alembic would."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy.engine import URL

from runner.errors import UsageError
from runner.settings import Settings
from runner.urls import env_py_driver


@dataclass
class Project:
    config: Config
    script: ScriptDirectory

    @property
    def ini_path(self) -> Path:
        return Path(str(self.config.config_file_name))


def load_project(settings: Settings) -> Project:
    path = settings.config_file
    if not path.is_file():
        raise UsageError(f"alembic config {path} not found (pass -c PATH or set ALEMBIC_CONFIG)")
    try:
        path.read_bytes()
    except OSError as exc:
        raise UsageError(f"alembic config {path} is not readable: {exc.strerror}") from None
    cmd_opts = argparse.Namespace(x=settings.x_args, config=str(path), name=settings.ini_section)
    config = Config(file_=str(path), ini_section=settings.ini_section, cmd_opts=cmd_opts)
    try:
        if not config.file_config.has_section(settings.ini_section):
            raise UsageError(f"alembic config {path} has no [{settings.ini_section}] section")
        script = ScriptDirectory.from_config(config)
    except CommandError as exc:
        raise UsageError(f"alembic config {path}: {exc}") from None
    except Exception as exc:  # configparser errors: the ini file itself is malformed
        if isinstance(exc, UsageError):
            raise
        raise UsageError(f"alembic config {path} is malformed: {exc}".splitlines()[0]) from None
    given = settings.env_py_url or settings.database_url  # env.py gets the user's driver
    if given is not None:
        set_url(config, given.render_as_string(hide_password=False))
    return Project(config=config, script=script)


@contextlib.contextmanager
def fresh_attributes(config: Config) -> Iterator[None]:
    """One env.py run must not see what another left in config.attributes (a closed
    connection cached by the cookbook's connection-sharing recipe, say)."""
    saved = dict(config.attributes)
    try:
        yield
    finally:
        config.attributes.clear()
        config.attributes.update(saved)


def set_url(config: Config, url: str) -> None:
    # configparser interpolation: a literal % must be doubled (ALEMBIC-NOTES).
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))


def point_at(project: Project) -> Callable[[URL], None]:
    """--embedded: env.py reads the throwaway server's URL from the config, with the driver
    this SQLAlchemy has (psycopg2 on 1.4); the runner's own sessions keep psycopg 3."""
    def point(url: URL) -> None:
        set_url(project.config, url.set(drivername=env_py_driver()).render_as_string(
            hide_password=False))

    return point
