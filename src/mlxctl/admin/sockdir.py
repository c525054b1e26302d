"""Who may reach the admin socket: its directory's owner and mode, and the peer's uid.

Three locks on one door, so that only the user who runs the controller talks to it:

- the socket lives in a directory only that user can enter (the state directory,
  0700, or the short per-user directory ``/tmp/mlxctl-UID``, 0700, which is refused
  when it is a symlink or belongs to anyone else: ``/tmp`` is shared, and another
  user could have made it first to read or impersonate the socket);
- the socket itself is 0600;
- the server asks the kernel who connected (``SO_PEERCRED`` on Linux, ``getpeereid``
  on macOS and the BSDs) and closes every connection from another uid, so even a
  socket made reachable by mistake answers no one else. Root is no exception: the
  controller is a user's tool, and root can read its state files anyway.

Stdlib only: the client imports this on every command.
"""

from __future__ import annotations

import os
import socket
import stat
import struct
import sys
from pathlib import Path

from mlxctl import paths
from mlxctl.errors import MlxctlError


def is_short_dir(socket_path: Path) -> bool:
    """The socket is in the per-user fallback directory under ``/tmp`` (not the state dir)."""
    return socket_path.parent.parent == paths.SHORT_SOCKET_ROOT


def check_dir(directory: Path, *, follow: bool) -> None:
    """Refuse (one line) a socket directory that another user could enter or own.

    ``follow``: the state directory may be reached through a symlink the user made;
    the per-user ``/tmp`` directory may not (anyone can plant a link there).
    """
    try:
        info = os.stat(directory) if follow else os.lstat(directory)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise MlxctlError(f"cannot use {directory}: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(info.st_mode):
        what = "a symlink" if stat.S_ISLNK(info.st_mode) else "not a directory"
        raise MlxctlError(f"refusing the admin socket directory {directory}: {what}")
    if info.st_uid != os.getuid():
        raise MlxctlError(
            f"refusing the admin socket directory {directory}: owned by uid {info.st_uid}, "
            f"not by you (uid {os.getuid()}); remove it or set MLXCTL_HOME to a shorter path"
        )
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise MlxctlError(
            f"refusing the admin socket directory {directory}: mode "
            f"{stat.S_IMODE(info.st_mode):04o} lets other users in (it must be 0700)"
        )


def prepare_dir(socket_path: Path) -> None:
    """The server's side: create the short directory 0700 if needed, then check it."""
    directory = socket_path.parent
    short = is_short_dir(socket_path)
    if short:
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise MlxctlError(f"cannot create {directory}: {exc.strerror or exc}") from None
    check_dir(directory, follow=not short)


def check_socket(socket_path: Path) -> None:
    """The client's side, before connecting: the directory passes :func:`check_dir` and
    the socket is the user's own (nobody else's server can be answering)."""
    info = os.lstat(socket_path)  # none: FileNotFoundError, no controller (not a refusal)
    check_dir(socket_path.parent, follow=not is_short_dir(socket_path))
    if not stat.S_ISSOCK(info.st_mode) or info.st_uid != os.getuid():
        raise MlxctlError(f"refusing {socket_path}: not a socket of yours")


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end of a Unix socket; None when the platform
    cannot say (the caller refuses the connection then)."""
    if hasattr(socket, "SO_PEERCRED"):  # Linux: struct ucred {pid_t; uid_t; gid_t}
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", raw)
        return int(uid)
    if sys.platform == "darwin" or "bsd" in sys.platform:
        return _getpeereid(sock.fileno())
    return None


def _getpeereid(fd: int) -> int | None:
    """libc's ``getpeereid(2)`` (macOS, FreeBSD, OpenBSD): the peer's effective uid."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    uid = ctypes.c_uint32()
    gid = ctypes.c_uint32()
    if libc.getpeereid(fd, ctypes.byref(uid), ctypes.byref(gid)) != 0:
        return None
    return int(uid.value)
