"""megatron_qwen: a Megatron-Core trainer for the Qwen2.5-Coder family (README.md; the design: docs/)."""

from megatron_qwen.platform.logs import install as _quiet_known_noise

_quiet_known_noise()  # before any megatron-core import: see platform/logs.py

__version__ = "0.1.0"
