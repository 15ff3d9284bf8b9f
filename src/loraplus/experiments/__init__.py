"""Experiments: the paper's evidence as runnable commands (toy model, sweeps, comparisons)."""
