"""llmft: full-parameter fine-tuning with Ray Train + DeepSpeed ZeRO."""
__version__ = "0.1.0"
