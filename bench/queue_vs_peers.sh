#!/usr/bin/env bash
# Runs `multiproc bench queue` and, in the same run, the peers it is compared
# with (../shared/peers: zmq_bench push/pull, py_mp_bench.py queue, os_limits
# rtt shm), then prints the ratios that issue 4's targets are stated in.
#
# Usage: bash bench/queue_vs_peers.sh [path/to/multiproc]   (default: build/release/tools/multiproc)
# Env:   BENCH_REPS (default 5), PEERS (default: ../shared/peers next to the repo)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
have_zmq=0
if g++ -O2 -std=c++17 -o "$out/zmq_bench" "$peers/zmq_bench.cpp" -lzmq 2>/dev/null; then
  have_zmq=1
fi

# A failing part must not hide the rest.
{
  "$tool" bench queue || echo "# multiproc bench queue exited with $?"
  "$out/os_limits" rtt
  "$out/os_limits" shm
  [[ $have_zmq == 1 ]] && "$out/zmq_bench"
  if command -v python3 >/dev/null; then
    (cd "$peers" && python3 py_mp_bench.py queue)
  fi
} 2>/dev/null | grep -v '^#' | tee "$out/all.txt"

python3 "$here/bench/ratios.py" "$out/all.txt" \
  "cpp_queue_tput_1p1c/zmq_pushpull_tput_64B_ipc>=4" \
  "cpp_queue_tput_2p2c/zmq_pushpull_tput_64B_ipc>=4" \
  "cpp_queue_tput_1p1c/py_queue_tput_1p1c>=50" \
  "cpp_queue_tput_2p2c/py_queue_tput_2p2c>=50" \
  "cpp_queue_rtt_p50<=2" \
  "~cpp_queue_rtt_p50/os_socketpair_rtt_p50" \
  "~cpp_queue_rtt_p50/os_shm_pingpong_spin_rtt_p50"
