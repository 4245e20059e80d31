"""megatron_qwen: a Megatron-Core trainer for the Qwen2.5-Coder family (see README.md and DESIGN.md)."""

__version__ = "0.1.0"
