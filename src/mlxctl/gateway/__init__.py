"""mlxctl's gateway: one URL and one key in front of every tier.

A small ASGI app (:mod:`mlxctl.gateway.app`) around ``litellm.Router``, which does
the routing work (fallbacks, retries, timeouts, remote provider adapters). Ours are
the parts LiteLLM's proxy server got wrong or made slow here: 401 for a bad key,
OpenAI-schema validation before a request reaches a backend, aliases, a bounded
number of requests per backend, and routes reloaded in place when mlxctl replaces
the routes file. Run as ``python -m mlxctl.gateway --config FILE --host H --port P``
with the master key in ``LITELLM_MASTER_KEY``.

Layering: this package imports only ``errors``, ``paths`` and ``runtimes``; the core
never imports it (it runs in its own process).
"""
