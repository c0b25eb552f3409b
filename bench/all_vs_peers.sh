#!/usr/bin/env bash
# `multiproc bench all` with every peer in the same run: the tool measures the
# OS limits and Python's multiprocessing itself; this adds ZeroMQ and CAF's
# remote actors (../shared/peers), so that every row of the table has a ratio.
# The table in docs/performance.md comes from this script.
#
# Usage: bash bench/all_vs_peers.sh [path/to/multiproc [bench options, e.g. --json]]
# Env:   BENCH_REPS (default 5), PEERS (default: ../shared/peers next to the repo)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
zmq_peers
caf_peers
"$tool" bench all --peer-lines "$out/peers.txt" "${extra[@]}"
