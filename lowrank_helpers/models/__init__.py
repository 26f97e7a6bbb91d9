"""Layers and networks: the low-rank layer, the MLP, the character transformer."""
