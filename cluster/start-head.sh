#!/usr/bin/env bash
# Start the Ray head node of a ser_tune cluster (without Docker; also the compose head's command).
#
# Environment (defaults in brackets):
#   RAY_NUM_CPUS [2]  RAY_MEMORY_BYTES [4 GiB]  RAY_OBJECT_STORE_BYTES [1 GiB]   node limits
#   RAY_NODE_IP [auto]           address other nodes use to reach this one
#   RAY_RESOURCES [none]         custom resources as JSON, e.g. '{"ser_tune_head": 1}'
#   RAY_GCS_PORT [6379]          port workers join on (--address HEAD:6379)
#   RAY_DASHBOARD_HOST [127.0.0.1]  keep loopback; in a container use 0.0.0.0 and publish on 127.0.0.1
#   RAY_DASHBOARD_PORT [8265]    RAY_CLIENT_PORT [10001]
#   RAY_TEMP_DIR [Ray default]   session/log directory root (keep the path short: socket paths)
#   RAY_JOB_STOP_WAIT_TIME_S [60]  seconds `ray job stop` lets a job's driver stop gracefully after
#                                its SIGTERM before SIGKILL (Ray's own default, 3 s, is too short for
#                                a study to stop its trials and record the interruption)
#   RAY_AUTH_MODE [token]        token auth; the token comes from RAY_AUTH_TOKEN, the file
#                                RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token (same token on every node)
# Extra arguments go to `ray start` unchanged: --block (stay in the foreground, as a container
# needs), --autoscaling-config=... (the cluster launcher adds it).
set -euo pipefail
source "$(dirname "$0")/ray-node-common.sh"

setup_auth
read_limits
RAY_GCS_PORT="${RAY_GCS_PORT:-6379}"
RAY_DASHBOARD_PORT="${RAY_DASHBOARD_PORT:-8265}"
RAY_CLIENT_PORT="${RAY_CLIENT_PORT:-10001}"
for name in RAY_GCS_PORT RAY_DASHBOARD_PORT RAY_CLIENT_PORT; do require_int "$name" "${!name}"; done
# Read by the head's job supervisor, which inherits this environment through `ray start`.
export RAY_JOB_STOP_WAIT_TIME_S="${RAY_JOB_STOP_WAIT_TIME_S:-60}"
[[ "$RAY_JOB_STOP_WAIT_TIME_S" =~ ^[0-9]+$ ]] \
  || die "RAY_JOB_STOP_WAIT_TIME_S must be a whole number of seconds, got '$RAY_JOB_STOP_WAIT_TIME_S'"

args=(--head --port "$RAY_GCS_PORT"
      --dashboard-host "${RAY_DASHBOARD_HOST:-127.0.0.1}" --dashboard-port "$RAY_DASHBOARD_PORT"
      --ray-client-server-port "$RAY_CLIENT_PORT"
      --disable-usage-stats "${LIMIT_ARGS[@]}")
[[ -n "${RAY_TEMP_DIR:-}" ]] && args+=(--temp-dir "$RAY_TEMP_DIR")

echo "ser_tune cluster: starting head: ray start ${args[*]} $*" >&2
exec ray start "${args[@]}" "$@"
