"""Document formats of the recipe (docs/formats.md): file-level FIM and repository documents, ChatML with its
loss mask, AST-FIM, import-graph file order, sentence splitting, DPO pairs rendered as two sequences."""
