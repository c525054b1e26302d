"""``mlxctl status`` with a controller running, without click.

``status`` is what users (and prompts, and scripts in loops) run most, and with a
controller running its answer is one request away: the controller already knows
health first-hand. Parsing the command line with click (and importing every command
module to register it) costs ~80 ms here, more than all the rest, so the exact
plain forms (``status``, ``status -o json|text``) are recognised here and answered
through the admin client alone. Any other form, or no controller, goes the usual way
(click, then the same request, or the state directory).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from mlxctl.errors import MlxctlError

# The argument lists answered here, and the output each asks for.
FORMS: dict[tuple[str, ...], str] = {
    ("status",): "text",
    ("status", "-o", "text"): "text",
    ("status", "-o", "json"): "json",
    ("status", "--output", "text"): "text",
    ("status", "--output", "json"): "json",
    ("status", "--output=text"): "text",
    ("status", "--output=json"): "json",
}


def quick(args: list[str]) -> int | None:
    """The exit code when ``args`` is answered here, None when the usual path must run."""
    output = FORMS.get(tuple(args))
    if output is None:
        return None
    from mlxctl.admin.client import connect
    from mlxctl.cli import report_error
    from mlxctl.paths import default_paths

    try:
        client = connect(default_paths())
        if client is None:
            return None
        show_status(client.call("GET", "/v1/status"), output)
    except MlxctlError as exc:
        report_error(exc)
        return int(exc.exit_code)
    return 0


def show_status(answer: dict[str, Any], output: str) -> None:
    """Print the controller's status answer as ``mlxctl status`` prints its own."""
    for note in answer["notes"]:
        print(note, file=sys.stderr, flush=True)
    if output == "json":
        sys.stdout.write(json.dumps(answer["status"]) + "\n")
        sys.stdout.flush()
    else:
        print(answer["text"])
