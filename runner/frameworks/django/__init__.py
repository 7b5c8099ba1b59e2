"""The Django adapter: Django's own MigrationLoader / MigrationExecutor / MigrationRecorder,
in process (never a shelled-out manage.py). Imported only with --framework django."""
