"""Pulling a model from the Hugging Face hub: resolve a revision to a commit, check the
disk, download into the shared cache, verify every file, record what was verified.

Shared by every source that reads the hub (``hf:`` tiers, catalog variants, GGUF files
inside hub repos); not a source itself. huggingface_hub does the HTTP, the cache
layout, the locking between processes and the in-process resume (a cut connection is
resumed with ``Range``); mlxctl adds what it leaves out:

- *what to fetch*: only the files a runtime reads (mlx-lm's own allow patterns), so a
  repo that also ships ``*.gguf`` or ``*.pth`` costs nothing extra;
- *a disk check before the first byte*, from the hub's file sizes;
- *content verification*: huggingface_hub checks sizes only. Each file is hashed
  after download (sha256 for LFS files, the git blob sha1 for the others) against the
  pinned listing; a mismatch removes the blob and fetches it once more;
- *a ledger* per repo and commit in mlxctl's state directory: which files were
  verified, with their size and mtime, so that a later run trusts exactly those
  bytes (a file changed since, or never verified, is verified again) without
  rehashing gigabytes on every pass. The ledger is also how ``models gc`` knows
  which cache entries mlxctl downloaded.

huggingface_hub is imported inside functions: ``status`` and ``diff`` never pay for it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlxctl.desired.state import ModelFile
from mlxctl.errors import ExitCode, MlxctlError
from mlxctl.machine.interfaces import JobProgress, ProgressFn, no_progress
from mlxctl.sources.hf_cache import hub_cache

COMMIT = re.compile(r"^[0-9a-f]{40}$")
# What mlx-lm downloads for a model (mlx_lm.utils): weights, config, tokenizer, chat
# template, custom code. Anything else in a repo (GGUF, PyTorch .bin/.pth) is skipped.
RUNTIME_PATTERNS: tuple[str, ...] = (
    "*.json",
    "model*.safetensors",
    "*.py",
    "tokenizer.model",
    "*.tiktoken",
    "tiktoken.model",
    "*.txt",
    "*.jsonl",
    "*.jinja",
)
FreeSpace = Callable[[Path], int]


class HubError(MlxctlError):
    """A pull failed for a reason the user can act on (one line)."""


@dataclass(frozen=True)
class Pin:
    """A repo at one commit, with the files a runtime needs and their digests."""

    repo: str
    requested: str
    commit: str
    files: tuple[ModelFile, ...]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


def free_space(path: Path) -> int:
    """Free bytes on the filesystem that holds ``path`` (or its nearest existing parent)."""
    for candidate in (path, *path.parents):
        with contextlib.suppress(OSError):
            return shutil.disk_usage(candidate).free
    return 0


def repo_dir(repo: str, cache: Path) -> Path:
    return cache / f"models--{repo.replace('/', '--')}"


def snapshot_dir(repo: str, commit: str, cache: Path) -> Path:
    return repo_dir(repo, cache) / "snapshots" / commit


def short(commit: str) -> str:
    return commit[:12] if COMMIT.match(commit) else commit


# --------------------------------------------------------------------------- errors


def explain(exc: BaseException, repo: str, revision: str) -> HubError:
    """One line for a hub failure, saying what to do; the token is never part of it."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, HubError):
        return exc
    if isinstance(exc, GatedRepoError):
        return HubError(
            f"{repo} is gated: accept its terms on the hub and set HF_TOKEN "
            "(a token with access to it)"
        )
    if isinstance(exc, RevisionNotFoundError):
        return HubError(
            f"{repo} has no revision {revision!r} (a branch, tag or commit)",
            exit_code=ExitCode.NOT_FOUND,
        )
    if isinstance(exc, RepositoryNotFoundError):
        return HubError(
            f"repository {repo} not found on the hub (check the name; a private repo needs "
            "HF_TOKEN)",
            exit_code=ExitCode.NOT_FOUND,
        )
    if isinstance(exc, RemoteEntryNotFoundError):
        return HubError(f"{repo}@{short(revision)}: a file is missing on the hub: {exc}")
    if isinstance(exc, OfflineModeIsEnabled):
        return HubError(f"cannot reach the hub for {repo}: HF_HUB_OFFLINE is set")
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else "?"
        if status in (401, 403):
            return HubError(
                f"the hub refused {repo} (HTTP {status}): set HF_TOKEN to a valid token"
            )
        return HubError(f"the hub answered HTTP {status} for {repo}; try again later")
    if isinstance(exc, LocalEntryNotFoundError):
        return HubError(f"cannot reach the hub for {repo} and it is not in the cache")
    if isinstance(exc, OSError) and exc.errno == 28:  # ENOSPC
        return HubError(f"disk full while downloading {repo}: free space and pull again")
    import httpx

    if isinstance(exc, httpx.HTTPError | ConnectionError | TimeoutError):
        return HubError(f"cannot reach the hub for {repo}: {type(exc).__name__}: {exc}")
    return HubError(f"pulling {repo}@{short(revision)} failed: {type(exc).__name__}: {exc}")


def _endpoint(environ: Mapping[str, str]) -> str | None:
    return environ.get("HF_ENDPOINT") or None


def _token(environ: Mapping[str, str]) -> str | None:
    return environ.get("HF_TOKEN") or None


# --------------------------------------------------------------------------- resolving


def resolve_pin(
    repo: str,
    revision: str,
    *,
    patterns: Sequence[str] = RUNTIME_PATTERNS,
    environ: Mapping[str, str] | None = None,
) -> Pin:
    """Ask the hub which commit ``revision`` is and which files (with digests) it holds."""
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile
    from huggingface_hub.utils._paths import filter_repo_objects

    env = os.environ if environ is None else environ
    api = HfApi(endpoint=_endpoint(env), token=_token(env))
    try:
        commit = revision
        if not COMMIT.match(revision):
            info = api.repo_info(repo, revision=revision)
            if info.sha is None:
                raise HubError(f"the hub gave no commit for {repo}@{revision}")
            commit = info.sha
        entries = [
            e for e in api.list_repo_tree(repo, revision=commit, recursive=True)
            if isinstance(e, RepoFile)
        ]  # fmt: skip
    except Exception as exc:
        raise explain(exc, repo, revision) from None
    chosen = list(filter_repo_objects(entries, allow_patterns=list(patterns), key=lambda e: e.path))
    if not chosen:
        raise HubError(
            f"{repo}@{short(commit)} has no files an MLX runtime reads "
            f"(looked for {', '.join(patterns)})",
            exit_code=ExitCode.NOT_FOUND,
        )
    files = tuple(
        sorted(
            (
                ModelFile(
                    path=e.path,
                    size=int(e.lfs.size if e.lfs else e.size),
                    sha256=e.lfs.sha256 if e.lfs else None,
                    blob=e.blob_id,
                )
                for e in chosen
            ),
            key=lambda f: f.path,
        )
    )
    return Pin(repo=repo, requested=revision, commit=commit, files=files)


# --------------------------------------------------------------------------- ledger


def ledger_path(state_models: Path, repo: str, commit: str) -> Path:
    """mlxctl's record of the files of ``repo@commit`` it verified."""
    return state_models / "hub" / repo.replace("/", "--") / f"{commit}.json"


def _stamp(path: Path) -> list[int] | None:
    """What identifies a file's bytes cheaply: size and mtime (of the blob behind a link)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def read_ledger(path: Path) -> dict[str, list[int]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    files = data.get("files") if isinstance(data, dict) else None
    return {str(k): list(v) for k, v in files.items()} if isinstance(files, dict) else {}


def _write_ledger(path: Path, repo: str, commit: str, stamps: Mapping[str, list[int]]) -> None:
    from mlxctl.machine.inventory import write_atomic

    record = {"repo": repo, "commit": commit, "files": dict(sorted(stamps.items()))}
    write_atomic(path, json.dumps(record, indent=1) + "\n")


def verified(files: Sequence[ModelFile], directory: Path, ledger: Path) -> bool:
    """Every file is in ``directory`` with its size, and unchanged since it was verified."""
    stamps = read_ledger(ledger)
    for f in files:
        stamp = _stamp(directory / f.path)
        if stamp is None or stamp[0] != f.size or stamps.get(f.path) != stamp:
            return False
    return bool(files)


def file_matches(path: Path, expected: ModelFile) -> bool:
    """Size, then content: sha256 for LFS files, the git blob sha1 for the others."""
    try:
        if path.stat().st_size != expected.size:
            return False
    except OSError:
        return False
    if expected.sha256:
        digest = hashlib.sha256()
    elif expected.blob:
        digest = hashlib.sha1(b"blob %d\0" % expected.size)
    else:
        return True
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest() == (expected.sha256 or expected.blob)


# --------------------------------------------------------------------------- pulling


def _progress_class(report: Callable[[int], None]) -> Any:
    """A tqdm class that forwards byte counts (huggingface_hub's progress hook)."""
    from huggingface_hub.utils.tqdm import tqdm as hf_tqdm

    base: Any = hf_tqdm  # untyped library base

    class Forward(base):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            report(int(n or 0))
            return None

    return Forward


def missing(pin: Pin, cache: Path, ledger: Path) -> list[ModelFile]:
    """The pinned files not yet verified in the cache."""
    directory = snapshot_dir(pin.repo, pin.commit, cache)
    stamps = read_ledger(ledger)
    out = []
    for f in pin.files:
        stamp = _stamp(directory / f.path)
        if stamp is None or stamp[0] != f.size or stamps.get(f.path) != stamp:
            out.append(f)
    return out


def check_disk(need: int, count: int, cache: Path, free: FreeSpace) -> None:
    """Refuse before the first byte when the files still missing do not fit."""
    have = free(cache)
    if need > have:
        raise HubError(
            f"not enough disk space in {cache}: {count} file(s) need {_gb(need)}, {_gb(have)} free",
        )


def _gb(n: int) -> str:
    if n >= 1 << 30:
        return f"{n / (1 << 30):.2f} GiB ({n} bytes)"
    return f"{n / (1 << 20):.1f} MiB ({n} bytes)"


def _remove_cached(repo: str, commit: str, path: str, cache: Path) -> None:
    """Drop a bad file: its snapshot link and the blob behind it (never half-trusted)."""
    link = snapshot_dir(repo, commit, cache) / path
    with contextlib.suppress(OSError):
        blob = link.resolve()
        if blob.is_relative_to(repo_dir(repo, cache)):
            blob.unlink()
    with contextlib.suppress(OSError):
        link.unlink()


def pull(
    pin: Pin,
    state_models: Path,
    *,
    progress: ProgressFn = no_progress,
    environ: Mapping[str, str] | None = None,
    free: FreeSpace = free_space,
    cache: Path | None = None,
) -> Path:
    """Download and verify ``pin`` into the shared cache; return its snapshot directory.

    Blocking; reports ``JobProgress("downloading", done, total)`` in bytes. Files
    already verified cost nothing; a file that fails verification is removed and
    fetched once more, then the pull fails.
    """
    env = os.environ if environ is None else environ
    cache = cache if cache is not None else hub_cache(env)
    ledger = ledger_path(state_models, pin.repo, pin.commit)
    todo = missing(pin, cache, ledger)
    directory = snapshot_dir(pin.repo, pin.commit, cache)
    total = pin.size
    done = total - sum(f.size for f in todo)
    progress(JobProgress("checking", done, total))
    if not todo:
        _write_ref(pin, cache)
        return directory
    # Files present but unverified (another tool's download, or a run cut short) are
    # hashed first: only the ones that do not match count against the disk.
    stamps = read_ledger(ledger)
    fetch: list[ModelFile] = []
    for f in todo:
        if not (directory / f.path).exists():
            fetch.append(f)
            continue
        progress(JobProgress(f"verifying {f.path}", done, total))
        if file_matches(directory / f.path, f):
            stamp = _stamp(directory / f.path)
            assert stamp is not None
            stamps[f.path] = stamp
            done += f.size
        else:
            # Corrupt or truncated: never trusted, never resumed from.
            _remove_cached(pin.repo, pin.commit, f.path, cache)
            fetch.append(f)
    _write_ledger(ledger, pin.repo, pin.commit, stamps)
    check_disk(sum(f.size for f in fetch), len(fetch), cache, free)
    for f in fetch:
        base = done
        for attempt in (1, 2):
            got = [0]

            def report(n: int, got: list[int] = got, base: int = base, name: str = f.path) -> None:
                got[0] += n
                progress(JobProgress(f"downloading {name}", base + got[0], total))

            path = _download(pin, f, cache, env, _progress_class(report), force=attempt == 2)
            if file_matches(path, f):
                break
            _remove_cached(pin.repo, pin.commit, f.path, cache)
            if attempt == 2:
                raise HubError(
                    f"{pin.repo}@{short(pin.commit)}: {f.path} does not match the pinned "
                    f"{'sha256' if f.sha256 else 'git oid'} after downloading it twice"
                )
            progress(JobProgress(f"{f.path} failed verification; fetching it again", base, total))
        stamp = _stamp(directory / f.path)
        assert stamp is not None
        stamps[f.path] = stamp
        _write_ledger(ledger, pin.repo, pin.commit, stamps)
        done = base + f.size
        progress(JobProgress(f"verified {f.path}", done, total))
    _write_ref(pin, cache)
    progress(JobProgress("done", total, total))
    return directory


def _write_ref(pin: Pin, cache: Path) -> None:
    """``refs/<branch>`` -> commit, as huggingface_hub records it, so other tools reading
    the cache by repo id (offline) find the same snapshot."""
    if COMMIT.match(pin.requested) or not pin.requested:
        return
    from mlxctl.machine.inventory import write_atomic

    ref = repo_dir(pin.repo, cache) / "refs" / pin.requested
    with contextlib.suppress(OSError):
        if ref.read_text(encoding="utf-8") == pin.commit:
            return
    write_atomic(ref, pin.commit)


def _download(
    pin: Pin, f: ModelFile, cache: Path, env: Mapping[str, str], tqdm_class: Any, *, force: bool
) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(
            hf_hub_download(
                pin.repo,
                f.path,
                revision=pin.commit,
                cache_dir=cache,
                endpoint=_endpoint(env),
                token=_token(env),
                force_download=force,
                tqdm_class=tqdm_class,
            )
        )
    except Exception as exc:
        raise explain(exc, pin.repo, pin.commit) from None


def cached_repos(cache: Path) -> Iterator[tuple[str, Path]]:
    """``(repo id, directory)`` of every model repo in the cache."""
    if not cache.is_dir():
        return
    for entry in sorted(cache.iterdir()):
        if entry.is_dir() and entry.name.startswith("models--"):
            yield entry.name.removeprefix("models--").replace("--", "/", 1), entry
