"""The database: engines and sessions, migrations, column types, retention."""
