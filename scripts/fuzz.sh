#!/usr/bin/env bash
# Fuzzes the decoder, the capture reader and the L7 hints for a bounded time.
#   scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 30)
# Seeds come from ../shared/corpus. A crash leaves its input in
# fuzz/artifacts/<target>/ and fails this script: copy it to
# fuzz/regressions/ so tests/fuzz_regressions.rs keeps it fixed.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-30}"

command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
cargo run -q --release -p tcpscope-wire --example fuzz_seeds -- ../shared/corpus/tcpdump fuzz/corpus
# cargo-fuzz needs nightly flags (-Zsanitizer); the stable toolchain takes
# them with RUSTC_BOOTSTRAP, which is all this machine has. Set only now:
# cargo rebuilds whatever it built without it, and the seeds' build above
# is the main workspace's, which `cargo test` reuses.
export RUSTC_BOOTSTRAP=1
cd fuzz
for target in decode capture l7; do
    echo "fuzz: $target for ${secs}s"
    cargo fuzz run -O "$target" "corpus/$target" -- -max_total_time="$secs" -max_len=65536 -print_final_stats=1 2>&1 \
        | grep -E "^(Done|stat::number_of_executed_units|==[0-9]+==ERROR|SUMMARY|thread .* panicked)" || true
    if ls "artifacts/$target"/crash-* >/dev/null 2>&1; then
        echo "fuzz: $target crashed; inputs in fuzz/artifacts/$target/" >&2
        exit 1
    fi
done
