"""The SDXL + LoRA engine: loading the pipeline, fusing and restoring LoRAs, decoding, the compiled UNet."""
