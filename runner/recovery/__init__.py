"""Recovery plans: what state the database is in and what to run next."""
