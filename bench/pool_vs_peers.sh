#!/usr/bin/env bash
# `multiproc bench pool`: the tool measures its peers itself in the same run
# (the socketpair RTT, Python's Pool.map and ProcessPoolExecutor) and prints
# one table with issue 3's targets. Kept for symmetry with the other scripts.
#
# Usage: bash bench/pool_vs_peers.sh [path/to/multiproc [bench options, e.g. --json]]
# Env:   BENCH_REPS (default 5)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
"$tool" bench pool "${extra[@]}"
