"""Numbered plain-SQL migrations, applied in order by gateway.db.migrate."""
