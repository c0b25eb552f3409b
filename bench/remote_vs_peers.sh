#!/usr/bin/env bash
# Runs `multiproc bench remote` and, in the same run, the peer it is compared
# with (../shared/peers: caf_bench remote, CAF 0.17.6's own remote actors over
# loopback with its default scheduler, and with the sharing one for
# orientation), then prints the ratios that issue 7's targets are stated in.
#
# Usage: bash bench/remote_vs_peers.sh [path/to/multiproc]   (default: build/release/tools/multiproc)
# Env:   BENCH_REPS (default 5), PEERS (default: ../shared/peers next to the repo)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

g++ -O2 -std=c++17 -o "$out/caf_bench" "$peers/caf_bench.cpp" -lcaf_io -lcaf_core -lpthread

# A failing part must not hide the rest.
{
  "$tool" bench remote || echo "# multiproc bench remote exited with $?"
  "$out/caf_bench" remote
  CAF_SCHED_POLICY=sharing "$out/caf_bench" remote
} 2>/dev/null | tee "$out/all.txt"

python3 "$here/bench/ratios.py" "$out/all.txt" \
  "cpp_remote_rtt_p50/caf_remote_request_rtt_int_p50<=0.5" \
  "cpp_remote_tput_64B/caf_remote_anon_send_tput_int>=2" \
  "~cpp_remote_rtt_p50/caf_remote_request_rtt_int_sched_sharing_p50"
