"""Helpers of identity's tests: the client, events, fuzzing hooks."""
