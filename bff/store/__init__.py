"""The readings store: one source of truth for every feed (SQLAlchemy 2; SQLite embedded, PostgreSQL in production)."""
