"""Content (S2): the public generation API, generation records, the avatar projection, result handling."""
