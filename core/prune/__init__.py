"""Step 1 of the method: filter pruning (scores, strategies, plans, surgery)."""

METRICS = ("l1norm", "random", "k3", "k4", "k34", "skew", "kur", "skew_kur")  # filter scores (scores.py)
