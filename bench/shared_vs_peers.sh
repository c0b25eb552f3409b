#!/usr/bin/env bash
# Runs `multiproc bench shared` and, in the same run, the peers it is compared
# with (../shared/peers: os_limits rtt, py_mp_bench.py value manager), then
# prints the ratios that issue 5's targets are stated in.
#
# Usage: bash bench/shared_vs_peers.sh [path/to/multiproc]   (default: build/release/tools/multiproc)
# Env:   BENCH_REPS (default 5), PEERS (default: ../shared/peers next to the repo)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# A failing part must not hide the rest.
{
  "$tool" bench shared || echo "# multiproc bench shared exited with $?"
  "$out/os_limits" rtt
  if command -v python3 >/dev/null; then
    (cd "$peers" && python3 py_mp_bench.py value manager)
  fi
} 2>/dev/null | grep -v '^#' | tee "$out/all.txt"

python3 "$here/bench/ratios.py" "$out/all.txt" \
  "cpp_value_incr_2proc/py_value_locked_incr_2proc>=2" \
  "cpp_dict_set_2proc/py_manager_dict_set_2proc>=20" \
  "cpp_value_fetch_add_rtt_p50/os_socketpair_rtt_p50<=1.5"
