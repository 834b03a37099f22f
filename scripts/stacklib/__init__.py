"""Library of the local stack launcher (scripts/stack.py): processes, config, checks, the demo flow."""
