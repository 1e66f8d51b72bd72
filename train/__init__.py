"""Supervised finetuning of the strong model on the selected subset (accelerate + peft)."""
