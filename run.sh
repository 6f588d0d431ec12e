#!/usr/bin/env bash
# Kiln's main job: invoke a serverless function in its own microVM inside a full jail with the
# `kiln` worker — one cold invocation (jail, VMM start, guest ready, handler), then warm ones
# on the same microVM — print its response and the timings of each phase, and show that
# nothing was left behind.
#
#   ./run.sh [FUNCTION [EVENT]]     default: echo '{"hello":"world"}'; functions live in
#                                   examples/functions (see docs/worker.md)
#
# Needs root and /dev/kvm.
source "$(dirname "$0")/scripts/lib.sh"
cd "$KILN_ROOT"

function="${1:-echo}"
default_event='{"hello":"world"}'
event="${2:-$default_event}"
need_root
[ -c /dev/kvm ] || die "/dev/kvm is missing: Kiln runs microVMs under KVM"
apt_ensure nftables iproute2
musl_ensure

step "building the jailer, the VMM and the kiln worker (release, static)"
cargo build --release -p jailer -p vmm -p kiln-worker
bin="${CARGO_TARGET_DIR:-$KILN_ROOT/target}/x86_64-unknown-linux-musl/release"

base=/srv/jailer
state=/run/kiln
mkdir -p "$base" "$state"
step "kiln invoke $function: its image is built on first use (examples/functions/$function, cached in $KILN_CACHE/functions)"
step "then: a jail (new PID and network namespaces, egress firewall, cgroups, chroot, own uid, no capabilities, Landlock, seccomp), the VMM, the guest over vsock; cold, then warm"
set +e
"$bin/kiln" invoke "$function" --event "$event" --repeat 3 \
    --jailer "$bin/jailer" --vmm "$bin/vmm" --chroot-base-dir "$base" --state-dir "$state" &
pid=$!
wait "$pid"
status=$?
set -e
step "kiln exited with status $status"

# Every instance id of that worker ends with its tag: <function>-<n>-<pid>-<8 hex digits>
# (the jailer's names for a jail being made or removed: .<id>.jailer, .<id>.removed).
left=()
for p in "$base"/vmm/*-"$pid"-* "$base"/vmm/.*-"$pid"-* /run/netns/*-"$pid"-* \
    "$state"/instances/*-"$pid"-* "$state"/workers/"$pid"-*; do
    [ -e "$p" ] && left+=("$p")
done
grep -q -- "-$pid-" /proc/self/mountinfo && left+=("mounts")
if find /sys/fs/cgroup -maxdepth 8 -type d -name "*-$pid-*" 2>/dev/null | grep -q .; then left+=("cgroups"); fi
[ ${#left[@]} -eq 0 ] || die "the worker left things behind: ${left[*]}"
step "every jail of worker $pid cleaned up: no chroot, netns, mount, cgroup or instance directory left"
exit "$status"
