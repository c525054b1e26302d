"""The controller's admin API: HTTP on a Unix socket only its user can reach.

``server`` runs in the controller (``mlxctl reconcile``), ``client`` in every command
that finds one running, ``routes`` maps each route to the use cases of
:mod:`mlxctl.app` with the controller's own context. See ``docs/admin-api.md``.
"""
