"""The GPU worker: SDXL with a per-request LoRA, served locally, on Modal, and benchmarked."""
