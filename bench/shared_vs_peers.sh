#!/usr/bin/env bash
# `multiproc bench shared`: the tool measures its peers itself in the same run
# (the socketpair RTT, Python's locked Value and Manager dict) and prints one
# table with issue 5's targets. Kept for symmetry with the other scripts.
#
# Usage: bash bench/shared_vs_peers.sh [path/to/multiproc [bench options, e.g. --json]]
# Env:   BENCH_REPS (default 5)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
"$tool" bench shared "${extra[@]}"
