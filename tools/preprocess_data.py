#!/usr/bin/env python
"""Tokenize JSONL records or repositories into Megatron indexed datasets (see megatron_qwen.data.preprocess)."""

import sys

from megatron_qwen.data.preprocess_cli import main

if __name__ == "__main__":
    sys.exit(main())
