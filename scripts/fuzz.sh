#!/usr/bin/env bash
# Runs every fuzz target of the module (a Fuzz* function in a package's
# tests) for FUZZTIME each, one at a time: go test -fuzz takes one target
# per run. make fuzz runs it with 10 minutes a target; make test with a few
# seconds. Prints each target's executions; fails on the first failure
# (the input that failed is written under the package's testdata/fuzz).
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
FUZZTIME=${FUZZTIME:-10m}
for pkg in $($GO list ./...); do
  for target in $($GO test -list '^Fuzz' "$pkg" | grep '^Fuzz' || true); do
    log=$(mktemp)
    if ! $GO test -run=NONE -fuzz="^${target}\$" -fuzztime="$FUZZTIME" "$pkg" >"$log" 2>&1; then
      cat "$log"
      rm -f "$log"
      echo "fuzz: $pkg $target FAILED" >&2
      exit 1
    fi
    execs=$(grep -o 'execs: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    echo "fuzz: ${pkg#github.com/clusterops/operator/} $target: ${execs:-0} executions in $FUZZTIME"
    rm -f "$log"
  done
done
