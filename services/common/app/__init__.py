"""A service's process: settings, the runtime it assembles, the entry point, commands, health."""
