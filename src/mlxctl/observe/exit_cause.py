"""Why a server died: a pure classifier over the evidence gathered when it did.

The evidence is plain values (gathered by :mod:`mlxctl.observe.gather` through the
process control and :mod:`mlxctl.machine.oom`): its exit status (``-N`` for signal N,
known only when this mlxctl process started it), whether mlxctl sent a stop signal,
whether it had become ready, its port, the last lines of its log, and what the kernel
says about memory. The classes, first match wins:

1. ``oom-killed``: the kernel killed it for memory. The kernel log names its PID, or
   its cgroup's ``oom_kill`` count grew while it ran and it died of SIGKILL (or its exit
   status is unknown).
2. An out-of-memory message in its log (Metal, CUDA, ``MemoryError``,
   ``std::bad_alloc``): ``error`` with the word ``out-of-memory``, whatever ended it
   (MLX aborts on an uncaught C++ exception, so Metal's out-of-memory is a SIGABRT).
3. ``signal``: a signal killed it (its name, and whether mlxctl sent it). A SIGKILL
   mlxctl did not send, on macOS, may be jetsam (the kernel's memory killer).
4. ``could-not-start``: it died before it was ready and its log says why: its port is
   in use, or its model could not be loaded.
5. ``error``: it exited with a non-zero code (its log's last error line: a Python
   exception's last line).
6. ``exited``: code 0, on its own; ``unknown``: mlxctl was not its parent and nothing
   else says why.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Sequence

from mlxctl.machine.interfaces import OomEvidence
from mlxctl.machine.record import ExitCause

BANNER = "--- mlxctl "
# Out of memory in a runtime's own words (MLX on Metal and CUDA, PyTorch, Python, C++).
MEMORY_PATTERNS = re.compile(
    r"out of memory|outofmemory|insufficient memory|\[metal::malloc\]|unable to allocate|"
    r"failed to allocate|cudaErrorMemoryAllocation|\bMemoryError\b|std::bad_alloc",
    re.IGNORECASE,
)
PORT_PATTERNS = re.compile(
    r"address already in use|\[errno (?:98|48)\]|eaddrinuse|error while attempting to bind",
    re.IGNORECASE,
)
MODEL_PATTERNS = re.compile(
    r"config\.json|safetensors|model_type|model type|tokenizer|repository not found|"
    r"HFValidationError|RepositoryNotFoundError|No such file or directory|not a valid model|"
    r"weights|Expected shape|missing parameters",
    re.IGNORECASE,
)
# A Python exception's last line: ``ValueError: ...``, ``mlx.core.RuntimeError: ...``.
EXCEPTION = re.compile(
    r"^(?:[A-Za-z_][\w]*\.)*[A-Z]\w*(?:Error|Exception|Exit|Interrupt|Failure|Warning)\b(?::|$)"
)
ERROR_WORD = re.compile(r"\b(?:error|fatal|panic|abort(?:ed)?)\b", re.IGNORECASE)


def classify(
    *,
    exit_code: int | None,
    stopped_by_us: bool,
    ready: bool,
    port: int,
    log_tail: Sequence[str] = (),
    oom: OomEvidence | None = None,
    platform: str = "linux",
) -> ExitCause:
    """The class of a death from its evidence (see the module's docstring)."""
    lines = _this_run(log_tail)
    sig = _signal_name(exit_code)
    evidence = oom or OomEvidence()
    when = "" if ready else " while starting"
    if evidence.kernel_line or (evidence.cgroup_kills and exit_code in (None, -9)):
        proof = (
            f"kernel log: {evidence.kernel_line}"
            if evidence.kernel_line
            else f"its cgroup's oom_kill count grew by {evidence.cgroup_kills}"
        )
        return ExitCause(
            "oom-killed",
            "oom-killed",
            f"killed by the kernel for memory (OOM killer){when}: {proof}",
            exit_code=exit_code,
            signal=sig or "SIGKILL",
            out_of_memory=True,
            evidence=evidence.kernel_line,
        )
    memory = _last(lines, MEMORY_PATTERNS)
    if memory:
        how = f"killed by {sig}" if sig else _code(exit_code)
        return ExitCause(
            "error",
            "out-of-memory",
            f"out of memory{when} ({how}): {memory}",
            exit_code=exit_code,
            signal=sig,
            by_us=stopped_by_us and sig in ("SIGTERM", "SIGKILL"),
            out_of_memory=True,
            evidence=memory,
        )
    if sig:
        by = "sent by mlxctl" if stopped_by_us else "not sent by mlxctl"
        detail = f"killed by {sig}{when} (exit code {exit_code}, {by})"
        if sig == "SIGKILL" and not stopped_by_us and platform == "darwin":
            detail += "; on macOS likely jetsam, the kernel's memory killer"
        error = _error_line(lines)
        return ExitCause(
            "signal",
            sig,
            detail + (f": {error}" if error else ""),
            exit_code=exit_code,
            signal=sig,
            by_us=stopped_by_us,
            evidence=error,
        )
    if not ready:
        held = _last(lines, PORT_PATTERNS)
        if held:
            return ExitCause(
                "could-not-start",
                "port-in-use",
                f"could not start: port {port} is already in use ({_code(exit_code)}): {held}",
                exit_code=exit_code,
                evidence=held,
            )
        model = _last(lines, MODEL_PATTERNS)
        if model and (exit_code is None or exit_code != 0):
            return ExitCause(
                "could-not-start",
                "bad-model",
                f"could not start: its model could not be loaded ({_code(exit_code)}): {model}",
                exit_code=exit_code,
                evidence=model,
            )
    error = _error_line(lines)
    if exit_code is not None and exit_code > 0:
        return ExitCause(
            "error",
            "error",
            f"{_code(exit_code)}{when}" + (f": {error}" if error else ""),
            exit_code=exit_code,
            evidence=error,
        )
    if exit_code == 0:
        return ExitCause("exited", "exited", f"exited with code 0{when} (on its own)", exit_code=0)
    if error:
        return ExitCause("error", "error", f"exited{when}: {error}", evidence=error)
    return ExitCause(
        "unknown",
        "exited",
        f"exited{when}; its exit status is unknown (mlxctl was not its parent)",
    )


def _this_run(log_tail: Sequence[str]) -> list[str]:
    """The non-empty lines after the last start banner (the log holds earlier runs too)."""
    lines = [line.strip() for line in log_tail]
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith(BANNER):
            lines = lines[i + 1 :]
            break
    return [line for line in lines if line]


def _last(lines: Sequence[str], pattern: re.Pattern[str]) -> str:
    for line in reversed(lines):
        if pattern.search(line):
            return line[:300]
    return ""


def _error_line(lines: Sequence[str]) -> str:
    """A Python exception's last line, else the last line that says error."""
    return _last(lines, EXCEPTION) or _last(lines, ERROR_WORD)


def _code(exit_code: int | None) -> str:
    return f"exited with code {exit_code}" if exit_code is not None else "exited"


def _signal_name(exit_code: int | None) -> str:
    """``SIGSEGV`` for exit status -11 (this machine's numbering: a status is read here)."""
    if exit_code is None or exit_code >= 0:
        return ""
    try:
        return signal.Signals(-exit_code).name
    except ValueError:
        return f"signal {-exit_code}"
