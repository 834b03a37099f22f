"""Developer tools of the worker that run no model: generating the LoRA target tables."""
