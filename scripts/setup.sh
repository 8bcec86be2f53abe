#!/usr/bin/env bash
# Installs whatever tcpscope needs that this Debian machine lacks, builds it,
# and runs one task. Used by the README quick start and by .ci/run.
#
#   scripts/setup.sh demo    live demo on self-made test hosts (the default)
#   scripts/setup.sh test    the whole test suite
#   scripts/setup.sh bench   the benchmarks
#   scripts/setup.sh deps    only install what is missing
#
# Needs root: it installs packages, and tcpscope loads BPF programs.
set -euo pipefail
cd "$(dirname "$0")/.."

task="${1:-demo}"

# Build: clang (BPF target), libelf/zlib (libbpf), pkg-config.
# Run and test: iproute2 (test hosts), tshark (independent decoder),
# tcpdump and ethtool (captures, benchmarks), nftables (loss injection),
# nmap, hping3 and curl (attack and client tests), xdp-tools (the rules
# benchmark's reference), bpftool (link checks),
# util-linux (setpriv, for the no-privilege test), prometheus (with
# promtool: the agent's tests scrape it with the real thing), systemd
# (systemd-analyze verify, for the shipped unit), python3-prometheus-client
# (its strict OpenMetrics parser checks the agent's OpenMetrics output),
# python3-jsonschema and python3-yaml (the Kubernetes manifests checked
# against the API's schemas), openssl (a TLS client for the L7 tests).
packages=(clang llvm libelf-dev zlib1g-dev pkg-config make gcc iproute2 tshark tcpdump ethtool nftables nmap hping3 curl xdp-tools bpftool util-linux prometheus systemd python3-prometheus-client python3-jsonschema python3-yaml openssl)

if [ "$(id -u)" -ne 0 ]; then
    echo "setup: run as root (sudo $0 $task): it installs packages and loads BPF programs" >&2
    exit 1
fi

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    # tshark asks whether non-root users may capture; answer no, unattended.
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
    # The Rust toolchain is not a Debian package here: it comes from rustup.
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 || { echo "setup: cargo not found: install Rust with rustup (https://rustup.rs)" >&2; exit 1; }

case "$task" in
deps) ;;
demo)
    cargo build --release
    exec target/release/tcpscope demo
    ;;
test)
    cargo build --release
    # Fuzz the decoders for about a minute (30 s per target); a crash fails.
    ./scripts/fuzz.sh 30
    # Unit tests, BPF_PROG_TEST_RUN tests, live tests on test hosts,
    # differential tests against tshark and between kernel and user space.
    cargo test --release
    ;;
bench)
    cargo build --release
    target/release/tcpscope bench programs
    target/release/tcpscope bench rules
    target/release/tcpscope bench conns
    exec target/release/tcpscope bench read
    ;;
*)
    echo "setup: unknown task '$task': use demo, test, bench or deps" >&2
    exit 2
    ;;
esac
