"""The worker on Modal: the app and its GPU class, the web endpoints, the weights Volume, deploy settings."""
