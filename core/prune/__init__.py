"""Step 1 of the method: filter pruning (scores, strategies, plans, surgery)."""
