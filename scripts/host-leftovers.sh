#!/usr/bin/env bash
# What the test suite could leave on the host, listed one per line, so that test.sh can
# compare the host before and after every test ran: nothing may be left behind after a VM
# ends, however it ends (README), and each test checks only what it made itself.
#
#   scripts/host-leftovers.sh    prints the list (sorted)
#
# Listed: cgroup directories that carry a jailer's mark (the sticky bit on a parent level a
# jailer made, docs/jailer.md step 3) or are named like a test's jail or parent cgroup,
# network namespaces in /run/netns, what is in the jailer's default chroot base /srv/jailer,
# the tests' scratch and jail directories in the temporary directory, and mount points
# under any of those.
set -euo pipefail
tmp="${TMPDIR:-/tmp}"
{
    find /sys/fs/cgroup -mindepth 1 -maxdepth 6 -type d \
        \( -perm -1000 -o -name 'kt-*' -o -name 'kiln*' \) -printf 'cgroup %p\n' 2>/dev/null || true
    find /run/netns -mindepth 1 -maxdepth 1 -printf 'netns %f\n' 2>/dev/null || true
    find /srv/jailer -mindepth 1 -maxdepth 2 -printf 'jail %p\n' 2>/dev/null || true
    # The tests' directories are named <prefix>-<pid>-<n> (tests/src/scratch.rs, jail.rs),
    # under $TMPDIR or directly under /tmp (Unix socket paths).
    find "$tmp" /tmp -mindepth 1 -maxdepth 1 -regextype posix-extended \
        -regex '.*/k[a-z0-9-]*-[0-9]+-[0-9]+' -printf 'scratch %p\n' 2>/dev/null || true
    awk -v tmp="$tmp" '$5 ~ "^(/srv/jailer/|/run/netns/|/tmp/k|" tmp "/k)" { print "mount " $5 }' \
        /proc/self/mountinfo
} | sort -u
