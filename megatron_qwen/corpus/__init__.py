"""The pretraining corpus at cluster scale on datatrove: language ID, rule and quality filters, dedup, shards."""
