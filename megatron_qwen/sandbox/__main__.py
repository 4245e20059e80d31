"""`python -m megatron_qwen.sandbox --language python FILE`: see megatron_qwen/sandbox/cli.py."""

import sys

from megatron_qwen.sandbox.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
