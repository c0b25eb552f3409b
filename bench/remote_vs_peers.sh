#!/usr/bin/env bash
# `multiproc bench remote` with its peer in the same run: CAF 0.17.6's own
# remote actors over loopback (../shared/peers/caf_bench remote), with its
# default scheduler and, for orientation, the sharing one; the tool prints
# one table with issue 7's targets.
#
# Usage: bash bench/remote_vs_peers.sh [path/to/multiproc [bench options, e.g. --json]]
# Env:   BENCH_REPS (default 5), PEERS (default: ../shared/peers next to the repo)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
caf_peers
"$tool" bench remote --peer-lines "$out/peers.txt" "${extra[@]}"
