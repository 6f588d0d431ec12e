#!/usr/bin/env bash
# Kiln's main job: boot a guest under Kiln's VMM inside a full jail, print what it said, and
# show that nothing was left behind.
#
#   ./run.sh [SCENARIO]     SCENARIO is a tiny-guest scenario (default: print); see
#                           guest/tiny/README.md
#
# Until function invocation lands (the `kiln` worker), the guest is the tiny freestanding test
# guest. Needs root and /dev/kvm.
source "$(dirname "$0")/scripts/lib.sh"
cd "$KILN_ROOT"

scenario="${1:-print}"
need_root
[ -c /dev/kvm ] || die "/dev/kvm is missing: Kiln runs microVMs under KVM"
apt_ensure nftables iproute2

step "building the jailer and the VMM (release, static)"
cargo build --release -p jailer -p vmm
step "building the tiny guest"
cargo build --release -p kiln-tests --bin tiny-guest-path
bin="$KILN_ROOT/target/x86_64-unknown-linux-gnu/release"
guest="$("$bin/tiny-guest-path")"
[ -f "$guest" ] || die "the tiny guest was not built at $guest"

id="kiln-demo-$$"
base=/srv/jailer
work="$(mktemp -d /tmp/kiln-run.XXXXXX)"
trap 'rm -rf "$work"' EXIT
cat > "$work/vm.json" <<JSON
{
  "boot-source": {"kernel_image_path": "/guest", "boot_args": "console=ttyS0 kiln.test=$scenario"},
  "machine-config": {"vcpu_count": 1, "mem_size_mib": 32}
}
JSON
mkdir -p "$base"

step "jail $id: new PID and network namespaces (egress firewall on), cgroups, chroot, uid 10000, no capabilities, Landlock, seccomp"
set +e
"$bin/jailer" --id "$id" --exec-file "$bin/vmm" --uid 10000 --gid 10000 \
    --chroot-base-dir "$base" --new-pid-ns --new-netns --cleanup-on-exit \
    --parent-cgroup-relative --parent-cgroup kiln \
    --bind-ro "$guest:/guest" --bind-ro "$work/vm.json:/vm.json" \
    -- --config-file /vm.json --no-api
status=$?
set -e
step "the VMM exited with status $status"

left=()
[ -e "$base/vmm/$id" ] && left+=("$base/vmm/$id")
[ -e "/run/netns/$id" ] && left+=("/run/netns/$id")
grep -q "$id" /proc/self/mountinfo && left+=("mounts")
if find /sys/fs/cgroup -maxdepth 6 -type d -name "$id" 2>/dev/null | grep -q .; then left+=("cgroups"); fi
[ ${#left[@]} -eq 0 ] || die "the jail left things behind: ${left[*]}"
step "jail $id cleaned up: no chroot, netns, mount or cgroup left"
exit "$status"
