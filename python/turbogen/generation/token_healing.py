"""``token_healing=True``, as transformers 4.57's ``GenerationMixin.heal_tokens`` (being built)."""
