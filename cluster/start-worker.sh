#!/usr/bin/env bash
# Start a Ray worker node that joins a ser_tune head (without Docker; also the compose worker's command).
#
# Environment (defaults in brackets):
#   RAY_HEAD_ADDRESS [required]  HOST:PORT of the head's GCS, e.g. ray-head:6379 or 10.0.0.5:6379
#   RAY_HEAD_WAIT_S [120]        how long to wait for the head's port before giving up
#   RAY_NUM_CPUS [2]  RAY_MEMORY_BYTES [4 GiB]  RAY_OBJECT_STORE_BYTES [1 GiB]   node limits
#   RAY_NODE_IP [auto]  RAY_RESOURCES [none]     as for start-head.sh
#   RAY_AUTH_MODE [token]        must match the head; the same token as the head (RAY_AUTH_TOKEN,
#                                RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)
# Extra arguments go to `ray start` unchanged (e.g. --block in a container).
set -euo pipefail
source "$(dirname "$0")/ray-node-common.sh"

setup_auth
read_limits
[[ -n "${RAY_HEAD_ADDRESS:-}" ]] || die "RAY_HEAD_ADDRESS is not set (HOST:PORT of the head node, e.g. ray-head:6379)"
[[ "$RAY_HEAD_ADDRESS" =~ ^[^:]+:[0-9]+$ ]] || die "RAY_HEAD_ADDRESS must be HOST:PORT, got '$RAY_HEAD_ADDRESS'"
RAY_HEAD_WAIT_S="${RAY_HEAD_WAIT_S:-120}"
require_int RAY_HEAD_WAIT_S "$RAY_HEAD_WAIT_S"

# A worker container may come up before the head listens; wait for the port (bash's /dev/tcp).
head_host="${RAY_HEAD_ADDRESS%:*}"; head_port="${RAY_HEAD_ADDRESS##*:}"
deadline=$((SECONDS + RAY_HEAD_WAIT_S))
until (exec 3<>"/dev/tcp/$head_host/$head_port") 2>/dev/null; do
  (( SECONDS < deadline )) || die "head $RAY_HEAD_ADDRESS not reachable after ${RAY_HEAD_WAIT_S}s"
  sleep 2
done

args=(--address "$RAY_HEAD_ADDRESS" --disable-usage-stats "${LIMIT_ARGS[@]}")
echo "ser_tune cluster: starting worker: ray start ${args[*]} $*" >&2
exec ray start "${args[@]}" "$@"
