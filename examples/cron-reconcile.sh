#!/bin/sh
# Keep a machine converged from cron without a long-running controller:
#   */5 * * * * $HOME/dotfiles/mlxctl/cron-reconcile.sh
# Exit codes (docs/exit-codes.md): 0 converged, 4 a start failed, 5 health timeout,
# 6 another mlxctl holds the lock (a controller runs: nothing to do).
set -u
mlxctl diff --output json >/dev/null
case $? in
  0) exit 0 ;;                      # nothing to change
  1) ;;                             # changes: apply them
  *) mlxctl diff; exit 1 ;;         # invalid stack: show why
esac
mlxctl reconcile --once --output json >>"${XDG_STATE_HOME:-$HOME/.local/state}/mlxctl/cron.jsonl"
code=$?
[ "$code" -eq 6 ] && exit 0
exit "$code"
