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
  which cache entries mlxctl downloaded;
- *distrust of the hub's answer*: its commit ids, file paths, sizes and digests go
  through the types of :mod:`mlxctl.desired.hub_names` (a bad one is one line, exit
  4); before a file is fetched its HEAD must name the pinned commit, size and digest,
  and while it is fetched the body is cut off at the pinned size (huggingface_hub
  checks the size only once the body has ended, however long it is).

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
from pathlib import Path
from typing import Any

from mlxctl.desired.hub_names import CommitId, GitRef, RepoId, RepoPath
from mlxctl.desired.state import ModelFile
from mlxctl.errors import ExitCode, MlxctlError, echo
from mlxctl.machine.interfaces import JobProgress, ProgressFn, no_progress
from mlxctl.sources.hf_cache import hub_cache, read_ref, repo_dir
from mlxctl.sources.pin import Pin

COMMIT = re.compile(r"^[0-9a-f]{40}$")
# A digest as huggingface_hub uses an ETag: the git blob sha1 or the LFS sha256. It
# becomes a file name (``blobs/<ETag>``), so nothing else may pass.
DIGEST = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
# How many entries of a repo's tree listing are read before the repo is refused: a model
# repo holds tens of files, a few hundred with many shards; a listing of 100 000 is not a
# model (and would make the pin, the lock and every later pass slow).
MAX_TREE_ENTRIES = 20_000
# How many files one pin may hold (the lock file refuses more too): see lockfile.
MAX_PINNED_FILES = 2000
# Progress granularity: huggingface_hub reads a body in 10 MiB chunks, so progress (and
# the size bound) would move only every 10 MiB; 1 MiB keeps both responsive.
DOWNLOAD_CHUNK = 1 << 20
# The ledger is rewritten after a file only when this many bytes, or as many files as
# were recorded before, were verified since the last write: a pull of N small files
# writes it O(log N) times (linear work in all), a big shard is recorded at once.
LEDGER_FLUSH_BYTES = 256 << 20
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


def free_space(path: Path) -> int:
    """Free bytes on the filesystem that holds ``path`` (or its nearest existing parent)."""
    for candidate in (path, *path.parents):
        with contextlib.suppress(OSError):
            return shutil.disk_usage(candidate).free
    return 0


def snapshot_dir(repo: RepoId, commit: CommitId, cache: Path) -> Path:
    """``models--ORG--NAME/snapshots/COMMIT``; the types make it a path inside ``cache``."""
    return repo_dir(RepoId(repo), cache) / "snapshots" / CommitId(commit)


def short(commit: str) -> str:
    return commit[:12] if COMMIT.match(commit) else commit


# --------------------------------------------------------------------------- errors


def explain(exc: BaseException, repo: str, revision: str) -> HubError:
    """One line for a hub failure, saying what to do; the token is never part of it."""
    from huggingface_hub.errors import (
        FileMetadataError,
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
    if isinstance(exc, LocalEntryNotFoundError) and exc.__cause__ is not None:
        # huggingface_hub wraps "the hub answered, but not usably" in "not in the
        # cache": say what the hub did, not that it could not be reached.
        cause = exc.__cause__
        if not isinstance(cause, FileMetadataError):
            return explain(cause, repo, revision)
        return HubError(
            f"the hub's answer for {repo}@{short(revision)} is not usable "
            f"({_first_line(cause)}); check HF_ENDPOINT"
        )
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
        return HubError(
            f"{repo}@{short(revision)}: a file is missing on the hub: {_first_line(exc)}"
        )
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

    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | ConnectionRefusedError):
        return HubError(
            f"cannot reach the hub for {repo}: {type(exc).__name__}: {_first_line(exc)}"
        )
    if isinstance(exc, httpx.TransportError | ConnectionError | TimeoutError):
        # Connected, then the answer broke off (a cut body, a stalled read): the hub was
        # reached, so saying it was not would send the user to check the wrong thing.
        return HubError(
            f"the hub's answer for {repo} broke off: {type(exc).__name__}: "
            f"{_first_line(exc)}; pull again"
        )
    return HubError(
        f"pulling {repo}@{short(revision)} failed: {type(exc).__name__}: {_first_line(exc)}"
    )


def _first_line(exc: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message, clipped: huggingface_hub's messages run
    to several lines (request ids, URLs, advice), an mlxctl error is one."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def _endpoint(environ: Mapping[str, str]) -> str | None:
    return environ.get("HF_ENDPOINT") or None


def _token(environ: Mapping[str, str]) -> str | None:
    return environ.get("HF_TOKEN") or None


# --------------------------------------------------------------------------- resolving


def resolve_pin(
    repo: RepoId,
    revision: CommitId | GitRef,
    *,
    patterns: Sequence[str] = RUNTIME_PATTERNS,
    environ: Mapping[str, str] | None = None,
) -> Pin:
    """Ask the hub which commit ``revision`` is and which files (with digests) it holds.

    Everything in the answer is validated before it is returned: the commit is 40 hex
    digits, each chosen file's path a :class:`RepoPath` with a size and digests, at
    most ``MAX_TREE_ENTRIES`` listed and ``MAX_PINNED_FILES`` chosen; anything else is
    one :class:`HubError` line (exit 4).
    """
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile
    from huggingface_hub.utils._paths import filter_repo_objects

    env = os.environ if environ is None else environ
    api = HfApi(endpoint=_endpoint(env), token=_token(env))
    try:
        if COMMIT.match(revision):
            commit = CommitId(revision)
        else:
            info = api.repo_info(repo, revision=revision)
            commit = _hub_commit(info.sha, repo, revision)
        entries = []
        for count, e in enumerate(api.list_repo_tree(repo, revision=commit, recursive=True)):
            if count >= MAX_TREE_ENTRIES:
                raise HubError(
                    f"{repo}@{short(commit)} lists more than {MAX_TREE_ENTRIES} files: "
                    "not a model repo mlxctl pulls"
                )
            if isinstance(e, RepoFile):
                entries.append(e)
    except Exception as exc:
        raise explain(exc, repo, revision) from None
    chosen = list(filter_repo_objects(entries, allow_patterns=list(patterns), key=lambda e: e.path))
    if not chosen:
        raise HubError(
            f"{repo}@{short(commit)} has no files an MLX runtime reads "
            f"(looked for {', '.join(patterns)})",
            exit_code=ExitCode.NOT_FOUND,
        )
    if len(chosen) > MAX_PINNED_FILES:
        raise HubError(
            f"{repo}@{short(commit)} has {len(chosen)} files a runtime would read, more than "
            f"the {MAX_PINNED_FILES} mlxctl pins"
        )
    try:
        files = tuple(sorted((_hub_file(e) for e in chosen), key=lambda f: f.path))
    except (TypeError, ValueError, AttributeError) as exc:
        raise HubError(
            f"the hub's file listing of {repo}@{short(commit)} is refused: {exc}"
        ) from None
    return Pin(repo=repo, requested=revision, revision=commit, files=files)


def _hub_commit(sha: object, repo: str, revision: str) -> CommitId:
    """The commit the hub resolved ``revision`` to, or one HubError line."""
    try:
        return CommitId(sha)
    except ValueError:
        raise HubError(
            f"the hub resolved {repo}@{echo(revision)} to {echo(sha)}, not a commit id "
            "(40 hex digits)"
        ) from None


def _hub_file(entry: Any) -> ModelFile:
    """One tree entry as a ModelFile (``ValueError``/``TypeError`` when it is not one)."""
    lfs = entry.lfs
    size = lfs.size if lfs else entry.size
    if not isinstance(size, int) or isinstance(size, bool):
        raise ValueError(f"{echo(entry.path)}: size {echo(size)} is not a number")
    return ModelFile(
        path=RepoPath(entry.path),
        size=size,
        sha256=lfs.sha256 if lfs else None,
        blob=entry.blob_id,
    )


# --------------------------------------------------------------------------- ledger


def ledger_dir(state_models: Path, repo: RepoId) -> Path:
    """Where the ledgers of ``repo`` live (one per commit)."""
    return state_models / "hub" / RepoId(repo).replace("/", "--")


def ledger_path(state_models: Path, repo: RepoId, commit: CommitId) -> Path:
    """mlxctl's record of the files of ``repo@commit`` it verified."""
    return ledger_dir(state_models, repo) / f"{CommitId(commit)}.json"


def _stamp(path: Path) -> list[int] | None:
    """What identifies a file's bytes cheaply: size and mtime (of the blob behind a link)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


# A ledger holds at most MAX_PINNED_FILES short lines.
MAX_LEDGER_BYTES = 4 * 1024 * 1024


def read_ledger(path: Path) -> dict[str, list[int]]:
    """The verified stamps (``{}`` when the ledger is missing or unusable: the files are
    then verified again, which costs time, never trust)."""
    from mlxctl.files import read_text_bounded

    try:
        data = json.loads(read_text_bounded(path, MAX_LEDGER_BYTES))
    except (OSError, ValueError, RecursionError):
        return {}
    files = data.get("files") if isinstance(data, dict) else None
    return {str(k): list(v) for k, v in files.items()} if isinstance(files, dict) else {}


def _write_ledger(
    path: Path, repo: RepoId, commit: CommitId, stamps: Mapping[str, list[int]]
) -> None:
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


class _Overrun(HubError):
    """The hub sent (or announced) more bytes than the pinned size of a file."""


def _progress_class(report: Callable[[int], None], limit: int, what: str) -> Any:
    """A tqdm class for huggingface_hub's progress hook: forwards byte counts, and is
    the size bound.

    huggingface_hub streams a body into a unique ``*.incomplete`` file, updating the bar
    before writing each chunk, and compares the size only when the body has ended (an
    endless body is written until the disk is full). Raising here stops the stream
    before the chunk that goes past ``limit`` is written, and huggingface_hub's own
    ``finally`` removes the partial file. A body announced longer than ``limit`` is
    refused before its first byte.
    """
    from huggingface_hub.utils.tqdm import tqdm as hf_tqdm

    base: Any = hf_tqdm  # untyped library base

    class Bounded(base):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            total = kwargs.get("total")
            if isinstance(total, int) and total > limit:
                raise _Overrun(f"{what}: the hub announces {total} bytes, the pin {limit}")
            super().__init__(*args, **kwargs)
            self.seen = int(kwargs.get("initial") or 0)

        def update(self, n: float | None = 1) -> bool | None:
            count = int(n or 0)
            self.seen += count
            if self.seen > limit:
                raise _Overrun(
                    f"{what}: the hub sent more than the pinned {limit} bytes; "
                    "stopped, and the partial file removed"
                )
            report(count)
            return None

    return Bounded


def missing(pin: Pin, cache: Path, ledger: Path) -> list[ModelFile]:
    """The pinned files not yet verified in the cache."""
    directory = snapshot_dir(pin.repo, pin.revision, cache)
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


def _remove_cached(repo: RepoId, commit: CommitId, path: RepoPath, cache: Path) -> None:
    """Drop a bad file: its snapshot link and the blob behind it (never half-trusted)."""
    link = snapshot_dir(repo, commit, cache) / RepoPath(path)
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
    ledger = _Ledger(ledger_path(state_models, pin.repo, pin.revision), pin)
    todo = missing(pin, cache, ledger.path)
    directory = snapshot_dir(pin.repo, pin.revision, cache)
    total = pin.size
    done = total - sum(f.size for f in todo)
    progress(JobProgress("checking", done, total))
    if not todo:
        _write_ref(pin, cache)
        return directory
    # Files present but unverified (another tool's download, or a run cut short) are
    # hashed first: only the ones that do not match count against the disk.
    fetch: list[ModelFile] = []
    try:
        for f in todo:
            if not (directory / f.path).exists():
                fetch.append(f)
                continue
            progress(JobProgress(f"verifying {f.path}", done, total))
            if file_matches(directory / f.path, f):
                ledger.add(f, directory)
                done += f.size
            else:
                # Corrupt or truncated: never trusted, never resumed from.
                _remove_cached(pin.repo, pin.revision, f.path, cache)
                fetch.append(f)
        ledger.flush()
        check_disk(sum(f.size for f in fetch), len(fetch), cache, free)
        for f in fetch:
            _fetch_one(pin, f, cache, env, progress, done, total)
            ledger.add(f, directory)
            done += f.size
            progress(JobProgress(f"verified {f.path}", done, total))
    finally:
        ledger.flush()
    _write_ref(pin, cache)
    progress(JobProgress("done", total, total))
    return directory


class _Ledger:
    """The ledger of one pull, written in batches (see ``LEDGER_FLUSH_BYTES``) and at the
    end, whatever happens: rewriting it after every file made a pull of N files O(N^2)."""

    def __init__(self, path: Path, pin: Pin) -> None:
        self.path = path
        self.pin = pin
        self.stamps = read_ledger(path)
        self.pending_files = 0
        self.pending_bytes = 0

    def add(self, f: ModelFile, directory: Path) -> None:
        stamp = _stamp(directory / f.path)
        if stamp is None:
            raise HubError(f"{self.pin.repo}@{short(self.pin.revision)}: {f.path} vanished")
        self.stamps[f.path] = stamp
        self.pending_files += 1
        self.pending_bytes += f.size
        if self.pending_bytes >= LEDGER_FLUSH_BYTES or self.pending_files * 2 >= len(self.stamps):
            self.flush()

    def flush(self) -> None:
        if self.pending_files:
            _write_ledger(self.path, self.pin.repo, self.pin.revision, self.stamps)
            self.pending_files = self.pending_bytes = 0


def _fetch_one(
    pin: Pin,
    f: ModelFile,
    cache: Path,
    env: Mapping[str, str],
    progress: ProgressFn,
    base: int,
    total: int,
) -> None:
    """Download one file (twice at most) until it matches its pinned digest."""
    directory = snapshot_dir(pin.repo, pin.revision, cache)
    for attempt in (1, 2):

        def report(n: int, got: list[int] = [0]) -> None:  # noqa: B006 - one per attempt
            got[0] += n
            progress(JobProgress(f"downloading {f.path}", base + got[0], total))

        _check_remote(pin, f, env)
        bounded = _progress_class(report, f.size, f"{pin.repo}@{short(pin.revision)}: {f.path}")
        path = _download(pin, f, cache, env, bounded, force=attempt == 2)
        if path != directory / f.path:
            raise HubError(
                f"{pin.repo}@{short(pin.revision)}: the hub served {f.path} from another commit "
                f"({echo(path.parent.name)}) while downloading it; nothing of it is used"
            )
        if not path.resolve().is_relative_to(repo_dir(pin.repo, cache).resolve()):
            # huggingface_hub names the blob after the ETag of its own HEAD: one that
            # changed since _check_remote can put the bytes elsewhere. Never used.
            path.unlink(missing_ok=True)
            raise HubError(
                f"{pin.repo}@{short(pin.revision)}: the hub's answer put {f.path} outside the "
                "cache while downloading it; not used"
            )
        if file_matches(path, f):
            return
        _remove_cached(pin.repo, pin.revision, f.path, cache)
        if attempt == 2:
            raise HubError(
                f"{pin.repo}@{short(pin.revision)}: {f.path} does not match the pinned "
                f"{'sha256' if f.sha256 else 'git oid'} after downloading it twice"
            )
        progress(JobProgress(f"{f.path} failed verification; fetching it again", base, total))


def _check_remote(pin: Pin, f: ModelFile, env: Mapping[str, str]) -> None:
    """Before a byte of ``f`` is fetched: the hub's HEAD names the pinned commit, size and
    digest, or one HubError line and nothing written.

    huggingface_hub would otherwise take the commit of its answer as the snapshot to
    write into (a stray snapshot, and a ``refs/<commit>`` file naming another commit)
    and its ETag as the blob's file name.
    """
    from huggingface_hub import file_download, hf_hub_url

    guard_hub_metadata()
    where = f"{pin.repo}@{short(pin.revision)}: {f.path}"
    try:
        url = hf_hub_url(pin.repo, f.path, revision=pin.revision, endpoint=_endpoint(env))
        meta = file_download.get_hf_file_metadata(url, token=_token(env), endpoint=_endpoint(env))
    except Exception as exc:
        raise explain(exc, pin.repo, pin.revision) from None
    if meta.commit_hash != pin.revision:
        raise HubError(
            f"{where}: the hub answered for commit {echo(meta.commit_hash)}, not the pinned "
            "one; nothing downloaded"
        )
    if meta.size is not None and meta.size != f.size:
        raise HubError(
            f"{where}: the hub announces {echo(meta.size)} bytes, the pin {f.size}; "
            "nothing downloaded"
        )
    if meta.etag not in {f.sha256, f.blob} - {None, ""}:
        raise HubError(
            f"{where}: the hub's digest (ETag {echo(meta.etag, 70)}) is not the pinned one; "
            "nothing downloaded"
        )


def _write_ref(pin: Pin, cache: Path) -> None:
    """``refs/<branch>`` -> commit, as huggingface_hub records it, so other tools reading
    the cache by repo id (offline) find the same snapshot.

    The ref is a :class:`GitRef` (no ``..``, no leading ``/``: a file inside ``refs/``);
    ``refs/`` belongs to the shared cache, so its mode is left as it is.
    """
    if COMMIT.match(pin.requested):
        return
    from mlxctl.machine.inventory import write_atomic

    ref = repo_dir(pin.repo, cache) / "refs" / GitRef(pin.requested)
    if read_ref(ref) == pin.revision:
        return
    write_atomic(ref, str(pin.revision), mode=0o644, foreign_dir=True)


def guard_hub_metadata() -> None:
    """Make every HEAD answer huggingface_hub acts on pass mlxctl's checks first.

    ``hf_hub_download`` asks the hub again (after :func:`_check_remote`) and writes
    where that answer says: ``blobs/<ETag>``, ``snapshots/<X-Repo-Commit>/`` and, for a
    missing file, ``.no_exist/<X-Repo-Commit>/``. A hub that answered the check
    truthfully could lie on that second HEAD and have bytes written outside the cache.
    Wrapping the one function both HEADs go through (``file_download`` looks it up
    by its module-level name at each call) makes an answer whose commit is not 40 hex
    digits or whose ETag is not a digest one :class:`HubError` before huggingface_hub
    sees it. Installed once per process; idempotent.
    """
    from huggingface_hub import file_download
    from huggingface_hub.errors import RemoteEntryNotFoundError

    original = file_download.get_hf_file_metadata
    if getattr(original, "mlxctl_guarded", False):
        return

    def refuse(url: str, what: str, value: object) -> HubError:
        from urllib.parse import urlsplit

        where = urlsplit(url).path.lstrip("/") or url  # org/repo/resolve/<rev>/<file>
        return HubError(f"{where}: the hub's {what} {echo(value)} is refused; nothing written")

    def guarded(*args: Any, **kwargs: Any) -> Any:
        url = str(kwargs.get("url", args[0] if args else "?"))
        try:
            meta = original(*args, **kwargs)
        except RemoteEntryNotFoundError as exc:
            headers = exc.response.headers if exc.response is not None else {}
            commit = headers.get("X-Repo-Commit")
            if commit is not None and not COMMIT.match(commit):
                raise refuse(url, "commit", commit) from None
            raise
        if meta.commit_hash is not None and not COMMIT.match(meta.commit_hash):
            raise refuse(url, "commit", meta.commit_hash)
        if meta.etag is not None and not DIGEST.match(meta.etag):
            raise refuse(url, "ETag", meta.etag)
        return meta

    guarded.mlxctl_guarded = True  # type: ignore[attr-defined]
    file_download.get_hf_file_metadata = guarded


def _download(
    pin: Pin, f: ModelFile, cache: Path, env: Mapping[str, str], tqdm_class: Any, *, force: bool
) -> Path:
    from huggingface_hub import constants, hf_hub_download

    guard_hub_metadata()

    # Read per chunk at call time by huggingface_hub (file_download.http_get).
    constants.DOWNLOAD_CHUNK_SIZE = min(constants.DOWNLOAD_CHUNK_SIZE, DOWNLOAD_CHUNK)
    try:
        return Path(
            hf_hub_download(
                pin.repo,
                f.path,
                revision=pin.revision,
                cache_dir=cache,
                endpoint=_endpoint(env),
                token=_token(env),
                force_download=force,
                tqdm_class=tqdm_class,
            )
        )
    except Exception as exc:
        raise explain(exc, pin.repo, pin.revision) from None


def cached_repos(cache: Path) -> Iterator[tuple[RepoId, Path]]:
    """``(repo id, directory)`` of every model repo in the cache (a directory whose name
    is not a valid repo id is not one mlxctl can name, and is skipped)."""
    if not cache.is_dir():
        return
    for entry in sorted(cache.iterdir()):
        if not (entry.is_dir() and entry.name.startswith("models--")):
            continue
        try:
            repo = RepoId(entry.name.removeprefix("models--").replace("--", "/", 1))
        except ValueError:
            continue
        yield repo, entry
