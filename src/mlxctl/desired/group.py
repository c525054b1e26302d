"""A distributed tier's rank on this machine: MLX's environment and its hostfile.

Each member's controller starts its own rank of ``mlx_lm.server`` without ``mlx.launch``
(and without ssh): MLX needs only ``MLX_RANK`` and, for the ring, ``MLX_HOSTFILE``, a
JSON list with one list of ``ip:port`` per rank, which is what ``mlx.launch --backend
ring`` writes into a temporary file (``mlx/_distributed_utils/launch.py``). For JACCL
(RDMA over Thunderbolt) it is ``MLX_JACCL_COORDINATOR`` (rank 0's ``ip:port``) and
``MLX_IBV_DEVICES``, a JSON file of each rank's device towards each other rank.

The hostfile is a file of the launch (written into the state directory before the
rank starts, and part of its hash): a member's new address restarts the group. Every
member renders the same text from the same stack files.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from pathlib import Path

from mlxctl.spec.schema import DistributedSpec, HostSpec

# A ring port chosen from the tier's name: ``RING_PORT_BASE + RING_PORT_STRIDE * k`` for
# k in [0, RING_PORT_SLOTS), rank r on ``+ r``: up to 16 ranks never overlap another
# tier's slot, and the whole range stays below Linux's and macOS's ephemeral ports.
RING_PORT_BASE = 34000
RING_PORT_STRIDE = 16
RING_PORT_SLOTS = 1000
GROUP_DIR = "groups"
RANK_ENV = "MLX_RANK"
HOSTFILE_ENV = "MLX_HOSTFILE"
JACCL_COORDINATOR_ENV = "MLX_JACCL_COORDINATOR"
IBV_DEVICES_ENV = "MLX_IBV_DEVICES"


def group_port(tier: str, spec: DistributedSpec) -> int:
    """The declared port, else one derived from the tier's name (the same on every
    member: each reads the same files)."""
    if spec.port is not None:
        return spec.port
    slot = zlib.crc32(tier.encode()) % RING_PORT_SLOTS
    return RING_PORT_BASE + RING_PORT_STRIDE * slot


def group_file(state_dir: Path, tier: str) -> Path:
    """The file this rank's launch reads (the ring's hostfile, JACCL's device matrix)."""
    return state_dir / GROUP_DIR / f"{tier}.json"


def ring_hostfile(members: Sequence[HostSpec], port: int) -> str:
    """``[["ip:port"], ...]``, rank r listening on ``port + r`` (``mlx.launch``'s
    ``--starting-port`` convention: ranks that share a machine do not collide)."""
    rows = [[_endpoint(host.address, port + rank)] for rank, host in enumerate(members)]
    return json.dumps(rows) + "\n"


def _endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def rank_environment(
    tier: str, spec: DistributedSpec, rank: int, members: Sequence[HostSpec], state_dir: Path
) -> tuple[dict[str, str], tuple[tuple[str, str], ...]]:
    """The environment of rank ``rank`` and the files its launch writes (path, text)."""
    path = str(group_file(state_dir, tier))
    port = group_port(tier, spec)
    env = {RANK_ENV: str(rank)}
    if spec.backend == "ring":
        env[HOSTFILE_ENV] = path
        return env, ((path, ring_hostfile(members, port)),)
    env[JACCL_COORDINATOR_ENV] = _endpoint(members[0].address, port)
    env[IBV_DEVICES_ENV] = path
    return env, ((path, json.dumps(spec.devices) + "\n"),)
