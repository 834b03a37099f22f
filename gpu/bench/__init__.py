"""The GPU benchmark: full-size SDXL architecture with random weights, LoRA swaps, contamination check."""
