"""Evaluation of finetuned models: generation, pairwise judging, AlpacaEval, Open LLM benchmarks."""
