#!/usr/bin/env bash
# Kiln's benchmark (project issue #10): Kiln's VMM and jailer side by side with QEMU's
# microvm machine (Debian's qemu-system-x86, KVM) on the tiny test guest, each figure as
# min / median / max over repeated runs. docs/benchmarks.md explains every row and holds a
# measured run.
#
#   scripts/bench.sh [kiln-bench flags]     e.g. --runs 50, --quick, --only api,serial,mem,
#                                           --firecracker PATH (Firecracker's figures in the
#                                           rows that have a Firecracker peer: API, serial,
#                                           teardown, snapshots; stripped of debug information
#                                           as Firecracker's releases are), --firecracker-jailer
#                                           PATH (its jailer: the jailed rows 3 and 5)
#
# Needs root and /dev/kvm. The table goes to stdout, progress to stderr.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$KILN_ROOT"

need_root
[ -c /dev/kvm ] || die "/dev/kvm is missing: Kiln runs microVMs under KVM"
apt_ensure qemu-system-x86 nftables iproute2
musl_ensure

step "building the VMM, the jailer, the worker, the bench and the tiny guest (release, static)"
cargo build --release -p vmm -p jailer -p kiln-worker -p kiln-bench -p kiln-tests >&2
bin="${CARGO_TARGET_DIR:-$KILN_ROOT/target}/x86_64-unknown-linux-musl/release"
tiny="$("$bin/tiny-guest-path")"

step "kiln-bench (the table follows on stdout)"
exec "$bin/kiln-bench" --vmm "$bin/vmm" --jailer "$bin/jailer" --kiln "$bin/kiln" \
    --tiny "$tiny" --profile "$KILN_ROOT/policies/tenant/default.json" \
    --qemu "$(command -v qemu-system-x86_64)" "$@"
