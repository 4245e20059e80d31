"""The tokenizer: Qwen's control ids and raw-text encoding that never emits them (`qwen.py`), the exact fast
path verified against Hugging Face at load time (`fast_encoder.py`), and small BPE training (`train.py`)."""
