"""Pure planning: what the history says and what would run. No database here."""
