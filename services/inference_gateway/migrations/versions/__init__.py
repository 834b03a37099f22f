"""The gateway's revisions, one module each, named `<revision>_<slug>.py`."""
