"""One adapter per migration framework; the core (lock, timeouts, ledger, snapshots, recovery)
is shared. Importing this package imports no framework: each adapter is imported lazily."""
