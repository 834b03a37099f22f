"""Identity (S1): avatars, their LoRA files (presigned upload, validation) and the identity events."""
