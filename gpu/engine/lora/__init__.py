"""LoRA files: download under a policy, parse safely, check against SDXL, cache."""
