"""Preprocessing modes: one module per family (pretrain, repo, post); `registry` holds the table."""
