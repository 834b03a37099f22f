"""Helpers of the gateway's tests: fakes, the harness, jobs, stand-in and slow workers."""
