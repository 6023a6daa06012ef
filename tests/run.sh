#!/usr/bin/env bash
# Volt's whole test suite: the README's test command, and what .ci/run calls.
#  1. cargo test --workspace: unit tests, device models on real virtqueues, the sandbox in child
#     processes, the volt binary, and tiny hand-assembled guests through KVM (each KVM/tap test
#     prints a SKIP: line where it cannot run);
#  2. the real-Linux end-to-end tests (tests/real_linux.rs, #[ignore]d in a plain cargo test):
#     Debian's stock kernel and the project's own guest kernel + rootfs booted by volt on a real
#     KVM - directly on a hardware-KVM host, else inside ../shared/nested-kvm/run.sh. They boot a
#     static release build of volt, which runs unchanged inside the nested guest.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace
target=x86_64-unknown-linux-gnu
RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --target "$target" --bin volt
VOLT_E2E_BIN="$PWD/target/$target/release/volt" \
  cargo test --test real_linux -- --ignored --test-threads=1
