"""The platform's services (identity, content, inference gateway) and their shared runtime."""
