"""Runtime adapters: how each server (mlx-lm, vllm-mlx) and the LiteLLM gateway is launched and
checked.
"""
