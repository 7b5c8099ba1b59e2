"""Schema snapshots: pg_dump --schema-only, normalization, diffs and created objects."""
