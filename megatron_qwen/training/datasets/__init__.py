"""Run-time sample sources of the trainer: pretraining GPT datasets and the mock, packed SFT conversations,
DPO pairs, blends, and `sampling.microbatches` (global sample index -> this rank's micro-batches)."""
