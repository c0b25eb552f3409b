#!/usr/bin/env bash
# Runs `multiproc bench pool` and, in the same run, the peers it is compared
# with (../shared/peers: py_mp_bench.py pool executor, os_limits rtt), then
# prints the ratios that issue 3's targets are stated in.
#
# Usage: bash bench/pool_vs_peers.sh [path/to/multiproc]   (default: build/release/tools/multiproc)
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

# Our lines and notes ('#': pool size, chaos kills and deaths) are shown;
# only metric lines go into the ratios. A failing part must not hide the rest.
{
  "$tool" bench pool || echo "# multiproc bench pool exited with $?"
  "$out/os_limits" rtt
  if command -v python3 >/dev/null; then
    (cd "$peers" && python3 py_mp_bench.py pool executor)
  fi
} 2>/dev/null | tee "$out/all.txt"

python3 - "$out/all.txt" <<'PY'
import sys
vals = {}
for line in open(sys.argv[1]):
    parts = line.split()
    if len(parts) >= 3 and not line.startswith("#"):
        try:
            vals[parts[0]] = float(parts[1])
        except ValueError:
            pass

def verdict(ok):
    return "met" if ok else "NOT met"

print("\nratios against peers from this run")
ratios = [
    ("cpp_pool_map_chunksize1", "py_pool_map_chunksize1_n20000", ">=", 25.0),
    ("cpp_pool_map_auto", "py_pool_map_default_chunksize_n200000", ">=", 4.0),
    ("cpp_pool_submit_latency_p50", "os_socketpair_rtt_p50", "<=", 1.5),
]
for ours, peer, op, bound in ratios:
    if ours in vals and peer in vals and vals[peer] > 0:
        r = vals[ours] / vals[peer]
        ok = r <= bound if op == "<=" else r >= bound
        print(f"  {ours} / {peer} = {r:.2f}  (target {op} {bound}: {verdict(ok)})")
    else:
        print(f"  {ours} / {peer}: missing")

print("absolute targets")
absolute = [
    ("cpp_pool_map_chunksize1", ">=", 1e6, "tasks/s"),
    ("cpp_pool_chaos_lost", "==", 0, ""),
    ("cpp_pool_chaos_duplicated", "==", 0, ""),
]
for ours, op, bound, unit in absolute:
    if ours not in vals:
        print(f"  {ours}: missing")
        continue
    v = vals[ours]
    ok = v >= bound if op == ">=" else (v <= bound if op == "<=" else v == bound)
    unit = f" {unit}" if unit else ""
    print(f"  {ours} = {v:g}{unit}  (target {op} {bound:,.0f}: {verdict(ok)})")

# For orientation only (no target): the executor's sequential submit->result.
ours, peer = "cpp_pool_submit_latency_p50", "py_executor_submit_result_sequential_latency"
if ours in vals and peer in vals and vals[peer] > 0:
    print(f"for orientation: {ours} / {peer} = {vals[ours] / vals[peer]:.3f}")
PY
