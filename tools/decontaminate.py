#!/usr/bin/env python
"""Drop JSONL records sharing a word 10-gram with HumanEval/MBPP/GSM8K/MATH (see megatron_qwen.data.decontam)."""

import sys

from megatron_qwen.data.decontam_cli import main

if __name__ == "__main__":
    sys.exit(main())
