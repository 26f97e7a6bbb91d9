"""A run and its settings, records, statistics."""
