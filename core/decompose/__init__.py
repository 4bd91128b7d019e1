"""Step 2 of the method: low-rank decomposition of conv (Tucker-2, CP3) and linear (SVD) layers."""
