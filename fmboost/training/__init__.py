"""The training loop (DeepSpeed ZeRO) and its parts: engine setup, checkpoints, validation."""
