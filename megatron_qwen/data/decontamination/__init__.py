"""Benchmark decontamination: word n-gram overlap with HumanEval, MBPP, GSM8K and MATH (`ngrams.py`), used inside
preprocessing and as `megatron-qwen decontaminate` (`cli.py`)."""
