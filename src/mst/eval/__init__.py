"""Evaluation: k-NN, linear and dense probes, figures, export."""
