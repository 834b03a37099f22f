"""Object storage (R2 or any S3): the store and the SigV4 signer for its hot calls."""
