"""The other members' ranks of distributed tiers, as observed state.

Each member's controller tells its own view of its ranks (``GET /v1/ranks`` on its
admin socket); its gateway relays that, with the stack's key, at ``GET /mlxctl/ranks``
(docs/multi-host.md, "One model across machines"). Observing the other members is
asking each one's gateway: no cluster protocol of mlxctl's own. An answer comes from
another machine, so it is validated and bounded like any file mlxctl reads; the
planner reads only :class:`~mlxctl.observe.state.PeerRank` values.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mlxctl.desired.state import DesiredState
from mlxctl.observe.state import PeerRank

# A member's answer: a few tiers, a line each; far above that is not one.
MAX_ANSWER_BYTES = 256 * 1024
PATH = "/mlxctl/ranks"
Line = Annotated[str, Field(max_length=2000)]


class RankModel(BaseModel):
    """One rank as a member's controller reports it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    rank: int = Field(ge=0, le=1024)
    state: Literal["running", "stopping", "idle"]
    generation: int = Field(ge=0, le=1 << 31)
    ready: bool = False
    can_start: bool = False
    failed: bool = False
    detail: Line = ""
    error: Line = ""


class RanksModel(BaseModel):
    """A member's whole answer: its name and its ranks, by tier."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    host: Annotated[str, Field(max_length=64)]
    tiers: dict[Annotated[str, Field(max_length=64)], RankModel] = Field(max_length=256)


def parse_ranks(host: str, raw: bytes) -> dict[str, PeerRank]:
    """Member ``host``'s answer as :class:`PeerRank` values by tier. Raises ``ValueError``
    with one line when it is not one (too big, not JSON of that shape, another host's)."""
    if len(raw) > MAX_ANSWER_BYTES:
        raise ValueError(f"its answer is over {MAX_ANSWER_BYTES} bytes")
    try:
        answer = RanksModel.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise ValueError(f"not a rank report: {where}: {first['msg']}") from None
    if answer.host != host:
        raise ValueError(f"answered as host '{answer.host[:64]}'")
    return {
        tier: PeerRank(
            host,
            True,
            rank.state,
            rank.generation,
            ready=rank.ready,
            can_start=rank.can_start,
            failed=rank.failed,
            detail=rank.detail,
            error=rank.error,
        )
        for tier, rank in answer.tiers.items()
    }


def unreachable(host: str, why: str) -> PeerRank:
    return PeerRank(host, False, detail=f"not reachable: {why}")


def unknown(host: str) -> PeerRank:
    """A member that answered but runs no rank of the tier (its files are older, or its
    controller has not resolved the tier yet)."""
    return PeerRank(host, True, "unknown", detail="its controller runs no rank of it")


def rank_report(
    host: str, ranks: Mapping[str, PeerRank], rank_of: Mapping[str, int]
) -> dict[str, object]:
    """The JSON this machine's controller answers for its own ranks (what
    :func:`parse_ranks` reads on the other members)."""
    return {
        "host": host,
        "tiers": {
            tier: {
                "rank": rank_of[tier],
                "state": r.state,
                "generation": r.generation,
                "ready": r.ready,
                "can_start": r.can_start,
                "failed": r.failed,
                "detail": r.detail[:2000],
                "error": r.error[:2000],
            }
            for tier, r in ranks.items()
            if r.state != "unknown"
        },
    }


class PeerSource(Protocol):
    def sample(self, desired: DesiredState | None) -> Mapping[str, Mapping[str, PeerRank]]:
        """The latest answers about ``desired``'s distributed tiers' other members (and
        keep asking about those, no others)."""
