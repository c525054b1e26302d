"""The checks that need the tier: what a request may ask of the model that will run it.

:func:`mlxctl.gateway.requests.check_request` knows the request; this knows the tier's
runtime and model facts (the :class:`~mlxctl.runtimes.gateway.Route` the routes file
gives, read from the model's ``config.json`` by :func:`mlxctl.desired.resolve.model_facts`):

- ``logit_bias`` ids below the vocabulary size (an id past it segfaults libmlx in both
  runtimes); a tier whose vocabulary is unknown takes no ``logit_bias`` at all;
- ``max_tokens`` / ``max_completion_tokens`` capped to the model's context (a tier cannot
  generate past it; the cap bounds what a request whose client left can cost);
- image parts only for a model that reads images, remote URLs only where the stack
  allows them (``spec.gateway.remoteImages``: the tier fetches them itself);
- a ``/v1/completions`` batch prompt only where the runtime takes one (it kills
  mlx-lm's generation thread), token-id prompts nowhere (ids are not checked by them);
- the extension fields each runtime takes safely (:data:`RUNTIME_EXTENSIONS`); another
  is a 400 naming it.
"""

from __future__ import annotations

import dataclasses

from mlxctl.gateway.bounds import RequestError, refuse
from mlxctl.gateway.requests import EXTENSIONS, Checked, Endpoint
from mlxctl.runtimes.gateway import GatewayConfig, Route

# The extension fields (outside the OpenAI schema) each runtime reads and takes safely,
# each checked by the gateway's bounds first. A runtime not listed (another stack's tier
# whose runtime is unknown) takes those every runtime takes.
RUNTIME_EXTENSIONS: dict[str, frozenset[str]] = {
    "mlx-lm": EXTENSIONS,
    "vllm-mlx": frozenset({"top_k", "min_p", "repetition_penalty", "chat_template_kwargs"}),
}
COMMON_EXTENSIONS = frozenset.intersection(*RUNTIME_EXTENSIONS.values())
# Runtimes that serve a list of prompts in one /v1/completions request.
BATCH_PROMPTS = frozenset({"vllm-mlx"})


def fit_request(
    checked: Checked, route: Route, endpoint: Endpoint, config: GatewayConfig
) -> Checked:
    """``checked`` as ``route``'s tier may take it (``max_tokens`` capped); raise
    :class:`RequestError` for what it must not see."""
    params = checked.params
    allowed = RUNTIME_EXTENSIONS.get(route.runtime, COMMON_EXTENSIONS)
    for name in sorted(EXTENSIONS & params.keys() - allowed):
        runtime = route.runtime or "its runtime"
        raise RequestError(400, f"'{name}' is not accepted by tier '{route.name}' ({runtime})",
                           code="unsupported_parameter", param=name)  # fmt: skip
    if checked.max_token_id is not None:
        if route.vocab_size is None:
            refuse("logit_bias", f"tier '{route.name}': its model's vocabulary size is unknown, "
                   "so no token id can be checked", code="unsupported_parameter")  # fmt: skip
        elif checked.max_token_id >= route.vocab_size:
            refuse(f"logit_bias.{checked.max_token_id}",
                   f"no such token: the vocabulary of tier '{route.name}' has "
                   f"{route.vocab_size} tokens")  # fmt: skip
    if checked.images:
        if not route.vision:
            known = "is text-only" if route.vision is False else "is not known to read images"
            refuse("messages", f"tier '{route.name}' {known}: send text parts only",
                   code="unsupported_parameter")  # fmt: skip
        if checked.remote_images and not config.remote_images:
            refuse("messages", "remote image URLs are not fetched (send a data: URL, or set "
                   "spec.gateway.remoteImages)", code="unsupported_parameter")  # fmt: skip
    if endpoint == "text":
        if checked.prompt == "tokens":
            refuse("prompt", "token-id prompts are not accepted: send the prompt as text",
                   code="unsupported_parameter")  # fmt: skip
        if checked.prompt == "texts" and route.runtime not in BATCH_PROMPTS:
            refuse("prompt", f"tier '{route.name}' takes one prompt a request (a string)",
                   code="unsupported_parameter")  # fmt: skip
    capped = {
        name: route.context
        for name in ("max_tokens", "max_completion_tokens")
        if route.context is not None
        and isinstance(params.get(name), int)
        and params[name] > route.context
    }
    if capped:
        checked = dataclasses.replace(checked, params={**params, **capped})
    return checked
