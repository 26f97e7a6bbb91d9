"""Training: the one loop, the stacked paths, the MLP's engine."""
