"""Developer scripts; stacklib is the local stack launcher's library."""
