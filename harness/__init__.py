"""Benchmarking harness for fine-tuning transformer encoders for text classification."""

__version__ = "0.1.0"
