#!/usr/bin/env bash
# Mutation testing of the guards (optional job, not part of .ci/run): mutmut over budget, breaker,
# health, retry, ratelimit, callbacks and dlq, with the fast tests that exercise them
# (configuration: [tool.mutmut] in pyproject.toml; isolation of parallel runs: bench/mutation_isolation.py).
#
#   bench/mutation.sh [--max-children N] [module ...]     # default: all seven modules, 2 children
#
# Needs mutmut 3 in the project's virtual environment: .venv/bin/pip install 'mutmut>=3.8,<4'
# Works on a copy of the tree (MUTWORK, default /tmp/clayops-mutation): mutmut writes mutated
# sources into mutants/ of the directory it runs in, and the checkout must never be mutated.
# Prints the score per module and in total; `cd $MUTWORK && mutmut show <name>` shows a mutant.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
MUTMUT="$(dirname "$PY")/mutmut"
WORK="${MUTWORK:-/tmp/clayops-mutation}"
CHILDREN=2
if [[ "${1:-}" == "--max-children" ]]; then
    CHILDREN="$2"
    shift 2
fi
MODULES=("$@")
[[ ${#MODULES[@]} -gt 0 ]] || MODULES=(budget breaker health retry ratelimit callbacks dlq)

[[ -x "$MUTMUT" ]] || { echo "mutmut not found next to $PY: $(dirname "$PY")/pip install 'mutmut>=3.8,<4'" >&2; exit 2; }

mkdir -p "$WORK"
rsync -a --delete --exclude .venv --exclude var --exclude mutants --exclude .git "$ROOT/" "$WORK/"
cd "$WORK"
rm -rf mutants var/mutslots
export CLAYOPS_NO_VENV=1
export CLAYOPS_MUTATION_SLOTS="$WORK/var/mutslots"

stop_slot_servers() {
    # The per-slot valkey-servers started by bench/mutation_isolation.py (only those: by pid file).
    for pidfile in "$WORK"/var/mutslots/*/redis.pid; do
        [[ -f "$pidfile" ]] && kill "$(cat "$pidfile")" 2>/dev/null || true
    done
}
trap stop_slot_servers EXIT

start=$(date +%s)
for module in "${MODULES[@]}"; do
    echo "== clayops.$module"
    # One module at a time keeps each run bounded; the test statistics are collected once and reused.
    "$MUTMUT" run --max-children "$CHILDREN" "clayops.$module.*" > "$WORK/mutmut-$module.log" 2>&1 \
        || { tail -n 30 "$WORK/mutmut-$module.log"; exit 1; }
    grep -a "mutations/second" "$WORK/mutmut-$module.log" || true
done
elapsed=$(($(date +%s) - start))

"$MUTMUT" results --all true | "$PY" "$ROOT/bench/mutation_score.py" "${MODULES[@]}"
echo "run time: ${elapsed}s with --max-children ${CHILDREN} ($(nproc) cores)"
