//! Operator commands against a running daemon, on SQLite and Postgres.
