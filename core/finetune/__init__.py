"""Fine-tuning (METHOD.md steps 3 and 4): settings, segments and pivots for the auxiliary
losses, the losses, the trainer with its run directory, and the run-directory reader."""
