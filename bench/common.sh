# Sourced by bench/*_vs_peers.sh: finds the multiproc tool (first argument,
# default build/release/tools/multiproc; the arguments after it go to
# `multiproc bench`) and makes a temporary directory $out (removed on exit)
# with $out/peers.txt for the lines of the peers the tool does not measure
# itself (ZeroMQ, CAF), built from ../shared/peers (PEERS) when it is there.
# The OS limits and Python's multiprocessing are measured by the tool.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tool="${1:-$here/build/release/tools/multiproc}"
extra=("${@:2}")
peers="${PEERS:-$here/../shared/peers}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
: > "$out/peers.txt"

[[ -x $tool ]] || { echo "no multiproc tool at $tool (build the release preset)" >&2; exit 1; }
[[ -d $peers ]] || { echo "# no peers at $peers (set PEERS): ZeroMQ and CAF rows get no ratio" >&2; peers=""; }

# Builds and runs one external peer (g++ -O2): peer NAME SOURCE LIBS... -- ARGS...
peer() {
  local name=$1 src=$2
  shift 2
  local libs=() args=()
  while [[ $# -gt 0 && $1 != -- ]]; do libs+=("$1"); shift; done
  [[ $# -gt 0 ]] && shift
  args=("$@")
  [[ -n $peers ]] || return 0
  if g++ -O2 -std=c++17 -o "$out/$name" "$peers/$src" "${libs[@]}" 2>/dev/null; then
    "$out/$name" "${args[@]}" 2>/dev/null | grep -v '^#' >> "$out/peers.txt" || true
  else
    echo "# cannot build $peers/$src: its rows get no ratio" >&2
  fi
}

# ZeroMQ push/pull and req/rep over ipc:// (pipe.tput, queue throughput).
zmq_peers() { peer zmq_bench zmq_bench.cpp -lzmq; }

# CAF 0.17.6's remote actors over loopback, with its default scheduler and,
# for orientation, the sharing one (remote).
caf_peers() {
  peer caf_bench caf_bench.cpp -lcaf_io -lcaf_core -lpthread -- remote
  if [[ -x $out/caf_bench ]]; then
    CAF_SCHED_POLICY=sharing "$out/caf_bench" remote 2>/dev/null | grep -v '^#' >> "$out/peers.txt" || true
  fi
}
