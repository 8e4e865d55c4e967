#!/usr/bin/env bash
# Runs every edgeplane check: formatting, clippy (warnings are errors), and
# all tests (unit, property and end-to-end with real processes). Does its
# own set-up on a fresh machine. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

./scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== cargo doc (private items too, so links to them are fine; other warnings are errors)"
RUSTDOCFLAGS="-D warnings -A rustdoc::private_intra_doc_links" cargo doc --workspace --no-deps --document-private-items --quiet

echo "== build binaries (the end-to-end tests start them as processes)"
cargo build --workspace --bins --quiet

echo "== cargo test"
out="${CARGO_TARGET_DIR:-target}/test-output.txt"
mkdir -p "$(dirname "$out")"
cargo test --workspace --quiet 2>&1 | tee "$out"
# Sum the per-binary results into one closing line.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "%d passed, %d failed, %d skipped\n", p, f, s; exit (f > 0) }' "$out"
