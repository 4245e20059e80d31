"""`python -m megatron_qwen.codebench --samples FILE ...`: see megatron_qwen/codebench/cli.py."""

import sys

from megatron_qwen.codebench.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
