"""The HTTP edge every service shares: limits before reading, error bodies, pagination, API types."""
