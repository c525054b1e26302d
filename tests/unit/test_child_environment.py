"""A server's environment: what its runtime needs plus its declared env (#11 row 10)."""

from __future__ import annotations

from mlxctl.machine.environment import child_environment, inherited
from mlxctl.runtimes.gateway import MASTER_KEY_ENV

PARENT = {
    # needed to run, and to find the same models
    "PATH": "/usr/bin",
    "HOME": "/Users/me",
    "USER": "me",
    "LANG": "en_US.UTF-8",
    "LC_ALL": "en_US.UTF-8",
    "TMPDIR": "/tmp/me",
    "PYTHONPATH": "/src",
    "HF_HOME": "/hf",
    "HF_TOKEN": "hf_secret",
    "HF_HUB_OFFLINE": "1",
    "HUGGINGFACE_HUB_CACHE": "/hf/hub",
    "XDG_CACHE_HOME": "/cache",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "MLX_BUFFER_CACHE_LIMIT": "0",
    "VLLM_MLX_ENABLE_THINKING": "0",
    "METAL_DEVICE_WRAPPER_TYPE": "1",
    "SSL_CERT_FILE": "/etc/ca.pem",
    # never passed on
    MASTER_KEY_ENV: "sk-gateway",
    "MLXCTL_GATEWAY_KEY": "sk-gateway",
    "MLXCTL_HOME": "/state",
    "OPENAI_API_KEY": "sk-openai",
    "AWS_SECRET_ACCESS_KEY": "aws",
    "GITHUB_TOKEN": "ghp",
    "SSH_AUTH_SOCK": "/tmp/agent",
    "LD_PRELOAD": "/evil.so",
    "HTTP_PROXY": "http://proxy:3128",
    "https_proxy": "http://proxy:3128",
    "PYTHONSTARTUP": "/x.py",
    "MLXCTL_INSTANCE": "stale-marker",
}
NEEDED = {
    "PATH", "HOME", "USER", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH", "HF_HOME", "HF_TOKEN",
    "HF_HUB_OFFLINE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME", "TRANSFORMERS_OFFLINE",
    "TOKENIZERS_PARALLELISM", "MLX_BUFFER_CACHE_LIMIT", "VLLM_MLX_ENABLE_THINKING",
    "METAL_DEVICE_WRAPPER_TYPE", "SSL_CERT_FILE",
}  # fmt: skip


def test_a_tier_gets_what_its_runtime_needs_and_nothing_else() -> None:
    env = child_environment(PARENT, {})
    assert set(env) == NEEDED
    assert all(env[name] == PARENT[name] for name in env)


def test_the_gateway_key_reaches_only_a_service_that_declares_it() -> None:
    tier = child_environment(PARENT, {"HF_TOKEN": "hf_tier"})
    assert MASTER_KEY_ENV not in tier and "MLXCTL_GATEWAY_KEY" not in tier
    assert "sk-gateway" not in tier.values()
    gateway = child_environment(PARENT, {MASTER_KEY_ENV: "sk-resolved"})
    assert gateway[MASTER_KEY_ENV] == "sk-resolved"


def test_declared_env_wins_and_adds() -> None:
    env = child_environment(PARENT, {"PATH": "/opt/bin", "OMP_NUM_THREADS": "2"})
    assert env["PATH"] == "/opt/bin" and env["OMP_NUM_THREADS"] == "2"


def test_it_is_pure() -> None:
    parent = dict(PARENT)
    declared = {"A": "1"}
    child_environment(parent, declared)["PATH"] = "changed"
    assert parent == PARENT and declared == {"A": "1"}


def test_mlxctl_own_variables_are_not_runtime_prefixes() -> None:
    assert not any(inherited(name) for name in ("MLXCTL_HOME", "MLXCTL_INSTANCE", "MLXCTL_X"))
