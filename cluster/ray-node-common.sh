# Shared helpers for start-head.sh and start-worker.sh (sourced, not executed).
# Validates the resource limits and the auth setup before `ray start` runs, so a bad
# value fails with one line naming the variable instead of a Ray traceback.

die() { echo "ser_tune cluster: $*" >&2; exit 2; }

# require_int NAME VALUE: VALUE must be a positive integer (bytes or a CPU count).
require_int() {
  [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "$1 must be a positive integer, got '$2'"
}

# Token auth is on unless someone explicitly opts out: the dashboard's job API runs
# arbitrary code, so an unauthenticated cluster is a remote shell for anyone who can reach it.
setup_auth() {
  export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
  case "$RAY_AUTH_MODE" in
    token) ;;
    disabled) echo "ser_tune cluster: WARNING RAY_AUTH_MODE=disabled, anyone who reaches this node can run code on it" >&2; return 0 ;;
    *) die "RAY_AUTH_MODE must be 'token' or 'disabled', got '$RAY_AUTH_MODE'" ;;
  esac
  # Ray looks for the token in RAY_AUTH_TOKEN, then the file RAY_AUTH_TOKEN_PATH, then ~/.ray/auth_token.
  if [[ -n "${RAY_AUTH_TOKEN:-}" ]]; then return 0; fi
  if [[ -n "${RAY_AUTH_TOKEN_PATH:-}" ]]; then
    [[ -s "$RAY_AUTH_TOKEN_PATH" ]] || die "RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH does not exist or is empty (create it: python -c 'import secrets; print(secrets.token_hex(32))' > $RAY_AUTH_TOKEN_PATH)"
    return 0
  fi
  [[ -s "$HOME/.ray/auth_token" ]] || die "RAY_AUTH_MODE=token but no token: set RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN, or run 'ray get-auth-token --generate' (writes ~/.ray/auth_token); every node and every client needs the same token"
}

# Node limits shared by head and worker. Without --memory/--object-store-memory each
# node would claim most of the machine's RAM, which breaks several nodes per host.
read_limits() {
  RAY_NUM_CPUS="${RAY_NUM_CPUS:-2}"
  RAY_MEMORY_BYTES="${RAY_MEMORY_BYTES:-4294967296}"          # 4 GiB for tasks and actors
  RAY_OBJECT_STORE_BYTES="${RAY_OBJECT_STORE_BYTES:-1073741824}" # 1 GiB shared-memory object store
  require_int RAY_NUM_CPUS "$RAY_NUM_CPUS"
  require_int RAY_MEMORY_BYTES "$RAY_MEMORY_BYTES"
  require_int RAY_OBJECT_STORE_BYTES "$RAY_OBJECT_STORE_BYTES"
  # Ray ends idle workers above this many; a trial's body runs in a worker kept for the next trial and unit
  # (ser_tune/study/warm.py): a trial actor and a body worker per CPU, and two more.
  export RAY_num_workers_soft_limit="${RAY_num_workers_soft_limit:-$((2 * RAY_NUM_CPUS + 2))}"
  LIMIT_ARGS=(--num-cpus "$RAY_NUM_CPUS" --memory "$RAY_MEMORY_BYTES" --object-store-memory "$RAY_OBJECT_STORE_BYTES")
  # Optional: fixed node address and custom resources (JSON), e.g. '{"ser_tune_head": 1}'.
  [[ -n "${RAY_NODE_IP:-}" ]] && LIMIT_ARGS+=(--node-ip-address "$RAY_NODE_IP")
  [[ -n "${RAY_RESOURCES:-}" ]] && LIMIT_ARGS+=(--resources "$RAY_RESOURCES")
  return 0
}

# No usage statistics leave the cluster.
export RAY_USAGE_STATS_ENABLED=0
