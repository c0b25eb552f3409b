#!/usr/bin/env bash
# Runs `multiproc bench pipe` and, in the same run, the peers it is compared
# with (../shared/peers: os_limits rtt/bw, zmq_bench, py_mp_bench.py start),
# then prints the ratios that issue 2's targets are stated in.
#
# Usage: bash bench/pipe_vs_peers.sh [path/to/multiproc]   (default: build/release/tools/multiproc)
# Env:   BENCH_REPS (default 5), PEERS (default: ../shared/peers next to the repo)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tool="${1:-$here/build/release/tools/multiproc}"
peers="${PEERS:-$here/../shared/peers}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

[[ -x $tool ]] || { echo "no multiproc tool at $tool (build the release preset)" >&2; exit 1; }
[[ -d $peers ]] || { echo "no peers at $peers (set PEERS)" >&2; exit 1; }

g++ -O2 -std=c++17 -o "$out/os_limits" "$peers/os_limits.cpp"
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

python3 - "$out/all.txt" <<'PY'
import sys
vals = {}
for line in open(sys.argv[1]):
    parts = line.split()
    if len(parts) >= 3:
        try:
            vals[parts[0]] = float(parts[1])
        except ValueError:
            pass
targets = [
    ("cpp_pipe_rtt_p50", "os_socketpair_rtt_p50", "<=", 1.5),
    ("cpp_pipe_sync_rtt_p50", "os_socketpair_rtt_p50", "<=", 1.5),
    ("cpp_pipe_tput_64B", "zmq_pushpull_tput_64B_ipc", ">=", 2.0),
    ("cpp_pipe_bw_1MiB", "os_socketpair_bw_1MiB_msgs", ">=", 0.8),
    ("cpp_spawn_first_reply_forkserver", "py_process_start_join_fork", "<=", 0.5),
]
print("\nratios against peers from this run")
for ours, peer, op, bound in targets:
    if ours in vals and peer in vals and vals[peer] > 0:
        r = vals[ours] / vals[peer]
        ok = r <= bound if op == "<=" else r >= bound
        print(f"  {ours} / {peer} = {r:.2f}  (target {op} {bound}: {'met' if ok else 'NOT met'})")
    else:
        print(f"  {ours} / {peer}: missing")
PY
