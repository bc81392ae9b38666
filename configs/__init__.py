"""Experiment configs: Python files whose get_config() returns a ConfigDict."""
