"""A tiny random-weight SDXL and LoRAs for it, built offline for tests, the demo and the CPU benchmark."""
