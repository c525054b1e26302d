"""``model: {hf: org/repo, revision: REV}``: a Hugging Face hub repo, pulled by mlxctl.

Pinned through the lock file beside the stack file, downloaded into the shared
Hugging Face cache (one copy for mlx-lm, vllm-mlx and every other tool), verified,
and served from the pinned commit's snapshot directory. The mechanics live in
:mod:`mlxctl.sources.hub` and :mod:`mlxctl.sources.hub_ref`, shared with the catalog.
"""

from __future__ import annotations

from mlxctl.desired.state import ModelRef
from mlxctl.paths import Paths
from mlxctl.sources import hub_ref
from mlxctl.sources.base import Source
from mlxctl.spec.schema import HfSource
from mlxctl.spec.stack_set import SourcedTier


def hf_ref(tier: SourcedTier, paths: Paths, *, online: bool = False) -> ModelRef:
    model = tier.spec.model
    assert isinstance(model, HfSource)
    return hub_ref.hub_model_ref(
        model.hf,
        model.revision,
        stack_file=tier.file,
        paths=paths,
        display=f"{model.hf}@{model.revision}",
        online=online,
    )


SOURCE = Source(
    name=hub_ref.HF,
    claims=lambda tier: isinstance(tier.spec.model, HfSource),
    resolve=hf_ref,
    present=hub_ref.present,
    prepare=hub_ref.prepare,
    resolve_online=lambda tier, paths: hf_ref(tier, paths, online=True),
)
