"""`python -m services.smoke`: checks each hop of a configured deployment, one line per hop."""
