#!/usr/bin/env bash
# `multiproc bench queue` with its peers in the same run: the tool measures the
# OS limits and Python's Queue itself; this adds ZeroMQ push/pull
# (../shared/peers/zmq_bench) and prints the tool's table (issue 4's targets).
#
# Usage: bash bench/queue_vs_peers.sh [path/to/multiproc [bench options, e.g. --json]]
# Env:   BENCH_REPS (default 5), PEERS (default: ../shared/peers next to the repo)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
zmq_peers
"$tool" bench queue --peer-lines "$out/peers.txt" "${extra[@]}"
