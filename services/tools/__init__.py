"""Operator and developer commands: dead letters, broker definitions, the local S3, tokens, the smoke test."""
