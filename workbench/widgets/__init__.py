"""Reusable widgets: the ASCII histogram and the layer statistics table."""
