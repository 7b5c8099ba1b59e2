"""safe-migrate: run Alembic migrations on PostgreSQL without turning a failure into an outage."""

__version__ = "0.1.0"
