#!/usr/bin/env bash
# Volt's whole test suite: the README's test command, and what .ci/run calls.
#  0. code health: cargo fmt --check and cargo clippy -D warnings (with the workspace lints);
#  1. cargo test --workspace: unit tests, device models on real virtqueues, the sandbox in child
#     processes, the volt binary, and tiny hand-assembled guests through KVM (each KVM/tap test
#     prints a SKIP: line where it cannot run);
#  2. the CLI tests again against both release builds: the dynamically linked one the README
#     runs (`cargo build --release`) and the static one (crt-static);
#  3. the real-Linux end-to-end tests (tests/real_linux.rs, #[ignore]d in a plain cargo test):
#     Debian's stock kernel and the project's own guest kernel + rootfs booted by volt on a real
#     KVM - directly on a hardware-KVM host, else inside ../shared/nested-kvm/run.sh. They boot
#     the dynamically linked release build, the binary the README tells users to run;
#  4. fuzz/smoke.sh: every cargo-fuzz target for FUZZ_SECONDS (15 here) from the seed corpus.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
target=x86_64-unknown-linux-gnu
cargo build --release --bin volt
RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --target "$target" --bin volt
for bin in target/release/volt "target/$target/release/volt"; do
  echo "tests/run.sh: CLI tests against $bin"
  VOLT_TEST_BIN="$PWD/$bin" cargo test --test cli
done
VOLT_E2E_BIN="$PWD/target/release/volt" \
  cargo test --test real_linux -- --ignored --test-threads=1
FUZZ_SECONDS=${FUZZ_SECONDS:-15} fuzz/smoke.sh
