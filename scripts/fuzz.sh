#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets) for a bounded time: FUZZ_SECONDS each (default 60).
# Needs Rust nightly and cargo-fuzz; installs both once (nightly through rustup, cargo-fuzz under
# ~/.cache/tillbridge/tools). The corpus grows under ~/.cache/tillbridge/fuzz-corpus, seeded from
# fuzz/seeds/make.py; a failing input is kept in fuzz/artifacts/<target>/ and the script fails.
#   scripts/fuzz.sh                 every target
#   scripts/fuzz.sh ingest pan      some of them
# -s none below: safe Rust needs no address sanitizer; debug assertions (overflow checks) stay on.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${FUZZ_SECONDS:-60}
cache=${XDG_CACHE_HOME:-$HOME/.cache}/tillbridge
tools=$cache/tools
cargo_fuzz_version=0.13.2
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "== installing Rust nightly (for libFuzzer's instrumentation)"
    rustup toolchain install nightly --profile minimal
fi
if ! "$tools/bin/cargo-fuzz" --version 2>/dev/null | grep -q "$cargo_fuzz_version"; then
    echo "== installing cargo-fuzz $cargo_fuzz_version into $tools"
    cargo install cargo-fuzz --version "$cargo_fuzz_version" --locked --root "$tools"
fi
export PATH=$tools/bin:$PATH
# Builds are kept between runs on one machine.
export CARGO_TARGET_DIR=$cache/fuzz-target
corpus=$cache/fuzz-corpus
python3 fuzz/seeds/make.py "$corpus"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
for t in "${targets[@]}"; do
    echo "== fuzz $t for ${secs}s"
    log=$cache/fuzz-$t.log
    status=0
    cargo +nightly fuzz run -s none "$t" "$corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 >"$log" 2>&1 ||
        status=$?
    grep -E "^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb|INFO: seed corpus)" "$log" || true
    if [ "$status" -ne 0 ]; then
        tail -n 60 "$log" >&2
        echo "fuzz target $t failed; the input is in fuzz/artifacts/$t/ (log: $log)" >&2
        exit 1
    fi
done
