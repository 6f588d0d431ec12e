//! The jailer's flags: the tables `kiln-argv` tokenizes against (Firecracker's jailer flags,
//! spelled as Firecracker spells them, plus Kiln's), `--help`, and the defaults and bounds of
//! values that the help text and the error messages quote.

use kiln_argv::{Flag, Table};

pub const DEFAULT_CHROOT_BASE: &str = "/srv/jailer";
/// Firecracker's default for `no-file` when no limit is given.
pub const DEFAULT_NO_FILE: u64 = 2048;
/// The jail's `/run` tmpfs when the profile says nothing: room for the API and vsock
/// sockets and a few small log or metrics files.
pub const DEFAULT_RUN_SIZE: u64 = 4 << 20;
pub const DEFAULT_RUN_INODES: u64 = 64;
/// Longest id (Firecracker's limit; also the longest hostname).
pub const MAX_ID_LEN: usize = 64;
/// Longest network interface name (IFNAMSIZ - 1).
pub const MAX_TAP_LEN: usize = 15;

/// `jailer [flags] [-- VMM_ARGS...]`: everything after `--` goes to the VMM.
pub const JAIL: Table<'static> = Table {
    flags: &[
        Flag::single("id"),
        Flag::single("exec-file"),
        Flag::single("uid"),
        Flag::single("gid"),
        Flag::single("chroot-base-dir"),
        Flag::single("netns"),
        Flag::switch("new-netns"),
        Flag::switch("share-host-netns"),
        Flag::multi("tap"),
        Flag::single("firewall"),
        Flag::multi("egress-allow"),
        Flag::switch("daemonize"),
        Flag::switch("new-pid-ns"),
        Flag::switch("cleanup-on-exit"),
        Flag::multi("cgroup"),
        Flag::single("cgroup-version"),
        Flag::single("parent-cgroup"),
        Flag::switch("parent-cgroup-relative"),
        Flag::multi("resource-limit"),
        Flag::multi("bind-ro"),
        Flag::multi("bind-rw"),
        Flag::switch("userfaultfd"),
        Flag::switch("userns"),
        Flag::single("profile"),
        Flag::single("seccomp-policy"),
        Flag::switch("timing"),
        Flag::multi("diagnose-without"),
        Flag::switch("help"),
        Flag::switch("version"),
    ],
    positionals: 0,
    rest: true,
};

/// `jailer cleanup [flags]`. `--` is accepted with nothing after it (as before the shared
/// tokenizer); an argument after it is refused by the caller.
pub const CLEANUP: Table<'static> = Table {
    flags: &[
        Flag::single("id"),
        Flag::single("exec-file"),
        Flag::single("chroot-base-dir"),
        Flag::single("wait-ms"),
        Flag::switch("help"),
    ],
    positionals: 0,
    rest: true,
};

/// How long `jailer cleanup` waits for the jail's processes to exit, by default.
pub const DEFAULT_CLEANUP_WAIT_MS: u64 = 10_000;
/// The longest wait `--wait-ms` accepts (an hour).
pub const MAX_CLEANUP_WAIT_MS: u64 = 3_600_000;

pub const HELP: &str = "\
Kiln jailer: builds one tenant's jail, then execs the VMM inside it.

usage: jailer --id ID --exec-file PATH --uid UID --gid GID [options] [-- VMM_ARGS...]
       jailer cleanup --id ID --exec-file PATH [--chroot-base-dir DIR] [--wait-ms MS]

Firecracker-compatible flags:
  --id ID                   jail id: 1-64 characters, alphanumeric or '-'
  --exec-file PATH          the VMM binary (copied into the jail)
  --uid UID, --gid GID      identity the VMM runs as (not 0)
  --chroot-base-dir DIR     jails go in DIR/<exec-name>/<id>/root (default /srv/jailer)
  --netns PATH              join this network namespace
  --daemonize               detach: double fork, setsid, stdio to /dev/null
  --new-pid-ns              run the VMM in a new PID namespace
  --cgroup FILE=VALUE       write VALUE to the jail's cgroup FILE (repeatable)
  --cgroup-version 1|2|auto cgroup hierarchy to use (default auto: v1 where mounted)
  --parent-cgroup PATH      cgroup parent of the jail's cgroup (default <exec-name>)
  --resource-limit RES=N    no-file, fsize, memlock, nproc or core (repeatable)
Kiln's additions:
  --parent-cgroup-relative  nest --parent-cgroup under the jailer's own cgroup
  --new-netns               create a network namespace named after the id
                            (neither: the jail gets an empty network namespace of its own)
  --share-host-netns        UNSAFE: the jail shares the jailer's network namespace (its
                            interfaces and abstract Unix sockets)
  --tap NAME[,mac=MAC][,ip=ADDRESS]...
                            create tap NAME in the jail's network namespace, filtered at
                            its ingress: only the guest's MAC and addresses (given here, or
                            the first ones seen), IPv4/IPv6/ARP, ARP and ND rate-limited,
                            the egress allow-list (repeatable)
  --firewall auto|on|off    install the egress firewall (auto: only in --new-netns; the tap
                            filters always, unless off)
  --egress-allow PROTO,CIDR[,PORT...]  allow-list entry (tcp, udp, icmp, any; repeatable)
  --bind-ro HOST:JAIL       bind HOST read-only at JAIL inside the jail (repeatable)
  --bind-rw HOST:JAIL       bind HOST read-write at JAIL inside the jail (repeatable)
  --userfaultfd             also create /dev/userfaultfd
  --userns                  run the VMM in a user namespace mapping only UID:GID
  --profile FILE            tenant profile (JSON; see policies/tenant/default.json)
  --seccomp-policy FILE     jail-level seccomp policy instead of the built-in one
  --cleanup-on-exit         stay as a supervisor; remove the jail when the VMM exits
  --timing                  print the time each step took on stderr
  --diagnose-without LAYER  DIAGNOSIS ONLY, debug builds only: leave out one protection
                            layer (landlock or privileges); see docs/jailer.md
  --help, --version
";
