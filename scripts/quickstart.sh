#!/usr/bin/env bash
# quickstart.sh: from a fresh Debian 12 checkout to a running demo or a tested build.
#
#   bash scripts/quickstart.sh demo                  build the release preset, run `multiproc demo`
#   bash scripts/quickstart.sh test                  the full check (what CI runs): the whole suite
#                                                    on the release and asan presets, the tsan
#                                                    preset's suite, then the fuzz pass
#   bash scripts/quickstart.sh test PRESET [ARGS]    build PRESET (release, debug, asan, tsan) and
#                                                    run ctest --preset PRESET [ARGS] only
#
# Both first make sure the Debian packages multiproc needs are installed: as root
# they are installed with apt-get; otherwise the script prints the command to run.
# Exits non-zero on the first failing step. Builds go to build/<preset>/ (CMakePresets.json).
# The full check's parts can be skipped: MULTIPROC_SANITIZERS=0 (asan, tsan), MULTIPROC_FUZZ=0.
# The fuzz pass runs each harness FUZZ_SECONDS (default 30) over its corpus, two at a time: with
# the fixed seed (scripts/fuzz.sh) it is a regression check; long hunts are run by hand.
set -euo pipefail

readonly PACKAGES=(
  cmake ninja-build g++
  libcaf-dev libcereal-dev libssl-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libspdlog-dev libfmt-dev libcli11-dev nlohmann-json3-dev
  python3
  iproute2 # `ip`: the network tests cut links between namespaces
)
# The fuzz pass of `test` (clang and its libFuzzer/sanitizer runtimes).
readonly FUZZ_PACKAGES=(clang-14 libclang-rt-14-dev)
readonly PRESETS=(release debug asan tsan)

section() {
  printf '\n==== %s ====\n' "$*"
}

die() {
  printf 'quickstart: error: %s\n' "$*" >&2
  exit 1
}

usage() {
  sed -n '2,9s/^# \{0,1\}//p' "$0" >&2
  exit 2
}

# Runs a step under a section header; reports its duration, or which step failed.
step() {
  local title=$1
  shift
  section "$title"
  local start=$SECONDS
  if ! "$@"; then
    printf '\nquickstart: FAILED: %s (%s)\n' "$title" "$*" >&2
    exit 1
  fi
  printf -- '---- %s: done in %ds\n' "$title" $((SECONDS - start))
}

# ensure_dependencies PKG...: installs those of PKG that are missing.
ensure_dependencies() {
  section "Dependencies"
  command -v dpkg-query >/dev/null 2>&1 ||
    die "dpkg-query not found: this script supports Debian 12 (bookworm); see docs/building.md"
  local missing=() pkg
  for pkg in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
      missing+=("$pkg")
    fi
  done
  if ((${#missing[@]} == 0)); then
    echo "all $# packages are installed"
    return
  fi
  echo "missing packages: ${missing[*]}"
  if [[ $(id -u) -ne 0 ]]; then
    echo "Install them with:"
    echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}"
    exit 1
  fi
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
}

check_preset() {
  local p
  for p in "${PRESETS[@]}"; do
    [[ $1 == "$p" ]] && return 0
  done
  die "unknown preset '$1' (choose one of: ${PRESETS[*]})"
}

configure_and_build() {
  local preset=$1
  step "Configure ($preset)" cmake --preset "$preset"
  step "Build ($preset)" cmake --build --preset "$preset"
}

run_demo() {
  ensure_dependencies "${PACKAGES[@]}"
  configure_and_build release
  local tool=build/release/tools/multiproc
  [[ -x $tool ]] || die "$tool was not built"
  step "Demo: $tool demo" "$tool" demo
}

# test_preset PRESET [CTEST ARGS...]: configure, build and test one preset.
test_preset() {
  local preset=$1
  shift
  configure_and_build "$preset"
  step "Test ($preset)" ctest --preset "$preset" "$@"
}

run_tests() {
  if (($# >= 1)); then
    check_preset "$1"
    ensure_dependencies "${PACKAGES[@]}"
    test_preset "$@"
    return
  fi
  local sanitizers=${MULTIPROC_SANITIZERS:-1} fuzz=${MULTIPROC_FUZZ:-1}
  if [[ $fuzz == 0 ]]; then
    ensure_dependencies "${PACKAGES[@]}"
  else
    ensure_dependencies "${PACKAGES[@]}" "${FUZZ_PACKAGES[@]}"
  fi
  test_preset release
  if [[ $sanitizers != 0 ]]; then
    test_preset asan
    test_preset tsan
  fi
  if [[ $fuzz != 0 ]]; then
    local fuzz_seconds=${FUZZ_SECONDS:-30}
    step "Fuzz (${fuzz_seconds}s per target)" env FUZZ_SECONDS="$fuzz_seconds" bash scripts/fuzz.sh
  fi
}

main() {
  (($# >= 1)) || usage
  # Everything below uses paths relative to the repository root.
  cd "$(dirname "${BASH_SOURCE[0]}")/.."
  local mode=$1
  shift
  local start=$SECONDS
  case $mode in
    demo) (($# == 0)) || usage; run_demo ;;
    test) run_tests "$@" ;;
    -h | --help | help) usage ;;
    *) usage ;;
  esac
  section "OK: $mode finished in $((SECONDS - start))s"
}

main "$@"
