"""Sync against async mode on the local worker, through the gateway's worker client."""
