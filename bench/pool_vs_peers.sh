#!/usr/bin/env bash
# Runs `multiproc bench pool` and, in the same run, the peers it is compared
# with (../shared/peers: py_mp_bench.py pool executor, os_limits rtt), then
# prints the ratios that issue 3's targets are stated in.
#
# Usage: bash bench/pool_vs_peers.sh [path/to/multiproc]   (default: build/release/tools/multiproc)
# Env:   BENCH_REPS (default 5), PEERS (default: ../shared/peers next to the repo)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# Our lines and notes ('#': pool size, chaos kills and deaths) are shown;
# only metric lines go into the ratios. A failing part must not hide the rest.
{
  "$tool" bench pool || echo "# multiproc bench pool exited with $?"
  "$out/os_limits" rtt
  if command -v python3 >/dev/null; then
    (cd "$peers" && python3 py_mp_bench.py pool executor)
  fi
} 2>/dev/null | tee "$out/all.txt"

python3 "$here/bench/ratios.py" "$out/all.txt" \
  "cpp_pool_map_chunksize1/py_pool_map_chunksize1_n20000>=25" \
  "cpp_pool_map_auto/py_pool_map_default_chunksize_n200000>=4" \
  "cpp_pool_submit_latency_p50/os_socketpair_rtt_p50<=1.5" \
  "cpp_pool_map_chunksize1>=1e6" \
  "cpp_pool_chaos_lost==0" \
  "cpp_pool_chaos_duplicated==0" \
  "~cpp_pool_submit_latency_p50/py_executor_submit_result_sequential_latency"
