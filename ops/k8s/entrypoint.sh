#!/bin/sh
# Start one process of the multi-process bytewax cluster that runs the guard, or
# (INDEPENDENT=1) one independent 1-worker dataflow: a market process of the market
# tier, its index the pod ordinal, or the firm tier (docs/scaling.md, "The market tier").
#
# The StatefulSet gives every pod a stable name <statefulset>-<ordinal> and the
# headless Service a stable DNS name <pod>.<service>.<namespace>.svc. The
# ordinal is the bytewax process id (-i); the addresses of all processes (-a)
# are built from the same names, so every process computes the same list.
#
# Recovery: each pod keeps exactly one bytewax recovery partition (part-<ordinal>)
# on its own volume. On the very first start the pod creates the partition set
# and keeps only its own file; the union over pods is then complete.
#
# Environment (set by ops/k8s/statefulset.yaml):
#   POD_NAME            e.g. riskguard-2 (downward API)
#   REPLICAS            number of processes (= StatefulSet replicas)
#   WORKERS_PER_PROCESS worker threads per process (default 2)
#   HEADLESS_SERVICE    headless Service name; POD_NAMESPACE its namespace
#   CLUSTER_PORT        bytewax inter-process port (default 2101)
#   RECOVERY_DIR        mounted per-pod volume (default /var/lib/riskguard/recovery)
#   SNAPSHOT_INTERVAL_S, BACKUP_INTERVAL_S
#   RISKGUARD_CONFIG    the guard TOML (read by riskguard.dataflows.guard)
#   INDEPENDENT=1       each pod its own 1-worker dataflow (no -w/-i/-a): the market
#                       tier's processes (RISKGUARD_TIER_INDEX = the ordinal) or its firm
#   RISKGUARD_ENTRYPOINT_DRY_RUN=1 prints the command instead of running it
set -eu

: "${POD_NAME:?POD_NAME must be set (downward API metadata.name)}"
: "${REPLICAS:?REPLICAS must be set to the StatefulSet replica count}"
: "${RISKGUARD_CONFIG:?RISKGUARD_CONFIG must name the guard TOML}"
WORKERS_PER_PROCESS="${WORKERS_PER_PROCESS:-2}"
CLUSTER_PORT="${CLUSTER_PORT:-2101}"
RECOVERY_DIR="${RECOVERY_DIR:-/var/lib/riskguard/recovery}"
SNAPSHOT_INTERVAL_S="${SNAPSHOT_INTERVAL_S:-30}"
BACKUP_INTERVAL_S="${BACKUP_INTERVAL_S:-300}"
PYTHON="${PYTHON:-python}"

ordinal="${POD_NAME##*-}"
case "$ordinal" in
  ''|*[!0-9]*) echo "entrypoint: cannot take an ordinal from POD_NAME=$POD_NAME" >&2; exit 2 ;;
esac
if [ "$ordinal" -ge "$REPLICAS" ]; then
  echo "entrypoint: ordinal $ordinal >= REPLICAS=$REPLICAS" >&2; exit 2
fi
set_name="${POD_NAME%-*}"
domain=""
if [ -n "${HEADLESS_SERVICE:-}" ]; then
  domain=".${HEADLESS_SERVICE}"
  if [ -n "${POD_NAMESPACE:-}" ]; then domain="${domain}.${POD_NAMESPACE}.svc"; fi
fi

addresses=""
i=0
while [ "$i" -lt "$REPLICAS" ]; do
  addr="${set_name}-${i}${domain}:${CLUSTER_PORT}"
  addresses="${addresses:+$addresses;}$addr"
  i=$((i + 1))
done

# an independent pod's dataflow is its own: one recovery partition, part-0
parts="$REPLICAS"
part="$ordinal"
if [ "${INDEPENDENT:-}" = "1" ]; then
  parts=1
  part=0
fi

mkdir -p "$RECOVERY_DIR"
if ! ls "$RECOVERY_DIR"/part-*.sqlite3 >/dev/null 2>&1; then
  if [ -e "$RECOVERY_DIR/.initialized" ]; then
    echo "entrypoint: $RECOVERY_DIR lost its partition (marker present, part file gone);" \
         "see ops/runbooks/lost-recovery-directory.md" >&2
    exit 3
  fi
  tmp="$(mktemp -d)"
  "$PYTHON" -m bytewax.recovery "$tmp" "$parts"
  mv "$tmp/part-${part}.sqlite3" "$RECOVERY_DIR/"
  rm -rf "$tmp"
  date -u +%Y-%m-%dT%H:%M:%SZ > "$RECOVERY_DIR/.initialized"
fi

if [ "${INDEPENDENT:-}" = "1" ]; then
  export RISKGUARD_TIER_INDEX="$ordinal"
  set -- "$PYTHON" -m bytewax.run riskguard.dataflows.guard \
    -r "$RECOVERY_DIR" -s "$SNAPSHOT_INTERVAL_S" -b "$BACKUP_INTERVAL_S"
else
  set -- "$PYTHON" -m bytewax.run riskguard.dataflows.guard \
    -w "$WORKERS_PER_PROCESS" -i "$ordinal" -a "$addresses" \
    -r "$RECOVERY_DIR" -s "$SNAPSHOT_INTERVAL_S" -b "$BACKUP_INTERVAL_S"
fi
if [ "${RISKGUARD_ENTRYPOINT_DRY_RUN:-}" = "1" ]; then
  if [ "${INDEPENDENT:-}" = "1" ]; then
    printf 'RISKGUARD_TIER_INDEX=%s ' "$RISKGUARD_TIER_INDEX"
  fi
  printf '%s\n' "$*"
  exit 0
fi
exec "$@"
