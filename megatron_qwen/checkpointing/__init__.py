"""Megatron checkpoint I/O below both the trainer and the converter: model weights as megatron-core distributed
checkpoints at any TP/PP/VPP layout, plus our architecture record in metadata.json (`weights.py`)."""
