#!/usr/bin/env bash
# Runs `multiproc bench pipe` and, in the same run, the peers it is compared
# with (../shared/peers: os_limits rtt/bw, zmq_bench, py_mp_bench.py start),
# then prints the ratios that issue 2's targets are stated in.
#
# Usage: bash bench/pipe_vs_peers.sh [path/to/multiproc]   (default: build/release/tools/multiproc)
# Env:   BENCH_REPS (default 5), PEERS (default: ../shared/peers next to the repo)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
have_zmq=0
if g++ -O2 -std=c++17 -o "$out/zmq_bench" "$peers/zmq_bench.cpp" -lzmq 2>/dev/null; then
  have_zmq=1
fi

{
  "$tool" bench pipe
  "$out/os_limits" rtt
  "$out/os_limits" bw
  [[ $have_zmq == 1 ]] && "$out/zmq_bench"
  command -v python3 >/dev/null && (cd "$peers" && python3 py_mp_bench.py start)
} 2>/dev/null | grep -v '^#' | tee "$out/all.txt"

python3 "$here/bench/ratios.py" "$out/all.txt" \
  "cpp_pipe_rtt_p50/os_socketpair_rtt_p50<=1.5" \
  "cpp_pipe_sync_rtt_p50/os_socketpair_rtt_p50<=1.5" \
  "cpp_pipe_tput_64B/zmq_pushpull_tput_64B_ipc>=2.0" \
  "cpp_pipe_bw_1MiB/os_socketpair_bw_1MiB_msgs>=0.8" \
  "cpp_spawn_first_reply_forkserver/py_process_start_join_fork<=0.5"
