"""The database side: connections, the advisory lock, catalog queries, running env.py."""
