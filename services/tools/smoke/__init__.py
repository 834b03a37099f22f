"""`python -m services.tools.smoke`: checks each hop of a configured deployment, one line per hop."""
