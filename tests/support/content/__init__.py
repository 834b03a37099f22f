"""Helpers of content's tests: the client, the harness, fuzzing hooks, units."""
