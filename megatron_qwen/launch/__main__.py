"""`python -m megatron_qwen.launch`: see megatron_qwen/launch/cli.py."""

import sys

from megatron_qwen.launch.cli import main

if __name__ == "__main__":
    sys.exit(main())
