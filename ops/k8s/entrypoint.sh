#!/bin/sh
# Start one guard process: a 1-worker bytewax dataflow, whatever the pod runs (the
# whole guard, a market process of the market tier, its firm process, or a replica;
# docs/scaling.md). A market process's index is its pod's ordinal
# (RISKGUARD_TIER_INDEX), so the market processes of one StatefulSet share a config.
#
# The StatefulSet gives every pod a stable name <statefulset>-<ordinal>.
#
# Recovery: each pod's dataflow keeps its one bytewax recovery partition (part-0) on
# its own volume, created on the very first start.
#
# Environment (set by ops/k8s/statefulset.yaml and the StatefulSets beside it):
#   POD_NAME            e.g. riskguard-market-1 (downward API)
#   REPLICAS            the StatefulSet's replica count
#   RECOVERY_DIR        mounted per-pod volume (default /var/lib/riskguard/recovery)
#   SNAPSHOT_INTERVAL_S, BACKUP_INTERVAL_S
#   RISKGUARD_CONFIG    the guard TOML (read by riskguard.dataflows.guard)
#   RISKGUARD_ENTRYPOINT_DRY_RUN=1 prints the command instead of running it
set -eu

: "${POD_NAME:?POD_NAME must be set (downward API metadata.name)}"
: "${REPLICAS:?REPLICAS must be set to the StatefulSet replica count}"
: "${RISKGUARD_CONFIG:?RISKGUARD_CONFIG must name the guard TOML}"
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

mkdir -p "$RECOVERY_DIR"
if ! ls "$RECOVERY_DIR"/part-*.sqlite3 >/dev/null 2>&1; then
  if [ -e "$RECOVERY_DIR/.initialized" ]; then
    echo "entrypoint: $RECOVERY_DIR lost its partition (marker present, part file gone);" \
         "see ops/runbooks/lost-recovery-directory.md" >&2
    exit 3
  fi
  if ! "$PYTHON" -m bytewax.recovery "$RECOVERY_DIR" 1; then
    # a half-made store (a full or read-only volume) would fail every later start with
    # "no recovery partitions": remove it, so the next start makes it again
    rm -f "$RECOVERY_DIR"/part-*.sqlite3*
    echo "entrypoint: could not create the recovery store in $RECOVERY_DIR" \
         "(is the volume full or read-only?)" >&2
    exit 4
  fi
  date -u +%Y-%m-%dT%H:%M:%SZ > "$RECOVERY_DIR/.initialized"
fi

export RISKGUARD_TIER_INDEX="$ordinal"
set -- "$PYTHON" -m bytewax.run riskguard.dataflows.guard \
  -r "$RECOVERY_DIR" -s "$SNAPSHOT_INTERVAL_S" -b "$BACKUP_INTERVAL_S"
if [ "${RISKGUARD_ENTRYPOINT_DRY_RUN:-}" = "1" ]; then
  printf 'RISKGUARD_TIER_INDEX=%s %s\n' "$RISKGUARD_TIER_INDEX" "$*"
  exit 0
fi
exec "$@"
