"""Residual quantisation itself: the codebook levels, nearest-codeword search, k-means initialisation and the
metrics of a set of codes."""
