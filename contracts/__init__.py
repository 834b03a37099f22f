"""The wire: models and names shared by more than one part of the platform (pydantic only)."""
