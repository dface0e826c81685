"""Naive float64 references, one module per layer family: plain loops written to be read,
never derived from the kernels they check."""
