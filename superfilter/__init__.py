"""Superfiltering: score instruction data with a small model, keep the best, finetune a strong one."""

__version__ = "0.1.0"
