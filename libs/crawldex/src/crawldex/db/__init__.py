"""PostgreSQL (production) or SQLite (embedded mode) state: tables, engine, migrations, repositories."""
