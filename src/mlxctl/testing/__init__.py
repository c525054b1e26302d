"""Helpers for tests: a tiny random model both mlx-lm and vllm-mlx can serve."""
