"""Offline preprocessing, `megatron-qwen preprocess`: readers, worker processes and writers (`pipeline.py`), one
chunk of records to token arrays (`assemble.py`), the modes that turn a record into documents (`modes/`)."""
