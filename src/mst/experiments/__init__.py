"""Experiments: ablation specs (variants, protocols), the runner, and its reports."""
