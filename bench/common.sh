# Sourced by bench/*_vs_peers.sh: finds the multiproc tool (first argument,
# default build/release/tools/multiproc) and the peers (PEERS, default
# ../shared/peers next to the repo), makes a temporary directory $out
# (removed on exit) and builds the peers' os_limits into it.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tool="${1:-$here/build/release/tools/multiproc}"
peers="${PEERS:-$here/../shared/peers}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

[[ -x $tool ]] || { echo "no multiproc tool at $tool (build the release preset)" >&2; exit 1; }
[[ -d $peers ]] || { echo "no peers at $peers (set PEERS)" >&2; exit 1; }

g++ -O2 -std=c++17 -o "$out/os_limits" "$peers/os_limits.cpp"
