"""`python -m megatron_qwen <command>` is `megatron-qwen <command>`."""

import sys

from megatron_qwen.cli import main

sys.exit(main())
