"""An example for every command, shown at the end of its ``--help`` (click's epilog).

One table, so a new command without an example is noticed (tests/unit/test_docs_commands.py
checks every command has one, and that each example parses).
"""

from __future__ import annotations

import click

EXAMPLES: dict[str, tuple[str, ...]] = {
    "bench": (
        "mlxctl bench fast",
        "mlxctl bench fast -c 1,4 -n 16 --max-tokens 64",
        "mlxctl bench fast --bandwidth 100 -o json",
        "mlxctl bench fast --plot bench.svg",
    ),
    "chat": ('mlxctl chat fast "What is the capital of France?"', "mlxctl chat fast"),
    "completion": (
        "mlxctl completion bash",
        "mlxctl completion zsh",
        "mlxctl completion fish",
    ),
    "catalog": ("mlxctl catalog ls --fits", "mlxctl catalog show qwen3-8b"),
    "catalog ls": ("mlxctl catalog ls --fits", "mlxctl catalog ls --tag coding -o json"),
    "catalog show": ("mlxctl catalog show qwen3-8b",),
    "diff": ("mlxctl diff", "mlxctl diff stacks/work.yaml -o json"),
    "doctor": ("mlxctl doctor", "mlxctl doctor -o json"),
    "down": ("mlxctl down",),
    "events": (
        "mlxctl events -n 20",
        "mlxctl events --tier fast --kind crash",
        "mlxctl events -f -o json",
    ),
    "gateway": ("mlxctl gateway key",),
    "gateway key": ("mlxctl gateway key", "mlxctl gateway key --rotate"),
    "gateway env": ("mlxctl gateway env --client openai", "mlxctl gateway env --client codex"),
    "gateway-key": ("mlxctl gateway-key",),
    "hardware": ("mlxctl hardware", "mlxctl hardware -o json"),
    "init": ("mlxctl init", "mlxctl init --intent coding --budget 24GB"),
    "load": ("mlxctl load big", "mlxctl load big --timeout 300 -o json"),
    "logs": ("mlxctl logs fast -n 100", "mlxctl logs gateway -f", "mlxctl logs fast -o json"),
    "models": ("mlxctl models ls", "mlxctl models pull"),
    "models gc": ("mlxctl models gc", "mlxctl models gc --yes"),
    "models ls": ("mlxctl models ls", "mlxctl models ls -o json"),
    "models pull": ("mlxctl models pull", "mlxctl models pull hf:mlx-community/Qwen3-4B-4bit"),
    "models rm": ("mlxctl models rm hf:mlx-community/Qwen3-4B-4bit",),
    "models update": ("mlxctl models update", "mlxctl models update fast"),
    "ps": ("mlxctl ps", "mlxctl ps -o json"),
    "quickstart": ("mlxctl quickstart",),
    "reconcile": (
        "mlxctl reconcile",
        "mlxctl reconcile --once",
        "mlxctl reconcile --once --dry-run stacks/",
    ),
    "render": ("mlxctl render stacks/work.yaml",),
    "service": ("mlxctl service install", "mlxctl service status"),
    "service install": ("mlxctl service install", "mlxctl service install --dry-run"),
    "service status": ("mlxctl service status", "mlxctl service status -o json"),
    "service uninstall": ("mlxctl service uninstall", "mlxctl service uninstall --dry-run -o json"),
    "status": ("mlxctl status", "mlxctl status -o json"),
    "unload": ("mlxctl unload big", "mlxctl unload big -o json"),
    "up": ("mlxctl up",),
    "validate": ("mlxctl validate", "mlxctl validate stacks/work.yaml -o json"),
}


def add_examples(group: click.Group, prefix: str = "") -> None:
    """Give each command of ``group`` (recursively) its examples as its epilog, unless
    it has an epilog of its own."""
    for name, command in group.commands.items():
        path = f"{prefix}{name}"
        examples = EXAMPLES.get(path)
        if examples and not command.epilog:
            # ``\b``: click prints the block as written (no rewrapping).
            command.epilog = "\b\nExamples:\n" + "\n".join(f"  {e}" for e in examples)
        if isinstance(command, click.Group):
            add_examples(command, f"{path} ")
