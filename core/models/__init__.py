"""Models: one family module per kind of model (core.models.family), building, checkpoint import."""
