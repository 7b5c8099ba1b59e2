"""The Alembic adapter: the project (alembic.ini, env.py), the revision graph and what would run
(`planning/`, no database), the env.py runner that applies one revision per step on the
connection the core prepared (`migrate.py`), the read-only probe of where env.py connects
(`probe.py`), and the subcommands (`commands/`)."""
