"""Helpers that run services as processes: the fault stack, proxies, live servers, fixtures."""
