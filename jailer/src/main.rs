//! Kiln's jailer: builds one tenant's jail, then execs the VMM in it.
//!
//! Read [`run`] top to bottom: each step is one call into the module named after it. The
//! steps, in the order they run (`--timing` labels them with these numbers; docs/jailer.md
//! describes each):
//!
//! 1. sanitise the process, parse and validate every flag and the tenant profile, plan the
//!    cgroups, compile the seccomp policy (`sanitize`, `args`, `profile`, `cgroup`,
//!    `seccomp`); ask KVM for the host CPUID the VMM needs, on a thread of its own joined
//!    after step 4 (`host_cpuid`);
//! 2. create the jail directory with its journal already in it, or adopt the orchestrator's
//!    (refusing a live jail); journal the intents of steps 2 to 4 in one write; its root,
//!    the VMM copy (on a thread of its own) and the `/run` tmpfs (`jail_dir`, `chroot`,
//!    `run_fs`);
//! 3. create the cgroups, write the limits and move into them (`cgroup`);
//! 4. set up the network on the host side: namespace, taps, firewall (`network`), on a
//!    thread of its own beside 2 and 3; both helper threads are joined before the split;
//! 5. split: daemonize if asked, then fork the jail process and its keeper (guard or
//!    supervisor), which undoes everything if the jail process fails (`supervise`);
//! 6. (jail process) join the network namespace, unshare mount/IPC/UTS/cgroup namespaces
//!    (`unshare`);
//! 7. pivot_root into the jail, create the device nodes, chroot into the root stacked on
//!    itself, which forbids user namespaces (`pivot`, `device_nodes`);
//! 8. rlimits, uid/gid, capabilities, no_new_privs, Landlock (`privileges`, `landlock`);
//! 9. seccomp, then exec the VMM, the host CPUID in its environment (`seccomp`, `exec`).
//!
//! Everything made on the host is journaled in the jail's state file before it is made
//! (`state`), so that a failure at any step, a SIGKILL at any instant, `--cleanup-on-exit`
//! and `jailer cleanup` remove exactly that (`cleanup`).
//!
//! Raw calls here: `signal` and `raise` in [`finish`], which dies of the VMM's signal (it may
//! be a real-time one, which nix's `Signal` cannot name).

/// `eprintln!` that drops a message stderr cannot take (a pipe nobody reads any more)
/// instead of panicking: `kiln_argv::stderr`.
macro_rules! eprintln {
    ($($arg:tt)*) => {
        kiln_argv::stderr::line(format_args!($($arg)*))
    };
}

mod cgroup;
mod chroot;
mod cleanup;
mod clock;
mod device_nodes;
mod exec;
mod host_cpuid;
mod jail_dir;
mod landlock;
mod network;
mod pivot;
mod privileges;
mod run_fs;
mod sanitize;
mod state;
mod supervise;
mod sys;
mod unshare;

// The parsers live in the library (jailer/src/lib.rs) so the fuzz targets reach them.
#[cfg(test)]
use jailer::profile;
use jailer::{args, seccomp};

use std::convert::Infallible;
use std::os::fd::OwnedFd;

use args::{Command, Config};
use clock::Clock;
use state::{Journal, SharedJournal};
use supervise::{Exit, JailSide, Role};

/// Step 1's name in `--timing`.
const STEP_1: &str = "1 sanitise and validate";

/// The Firecracker release whose jailer flags and layout this jailer implements (what
/// `--version` reports first: launchers written for Firecracker parse it).
const FIRECRACKER_VERSION: &str = "1.17.0";

/// Step 2's `--timing` labels: the main thread's part, and the VMM copy's thread.
const STEP_2: &str = "2 chroot directory";
const STEP_2_COPY: &str = "2 VMM copy";
/// The host CPUID thread's `--timing` label: how long the main thread waited for it after
/// steps 2 to 4.
const HOST_CPUID: &str = "host CPUID joined";

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error(transparent)]
    Sanitize(#[from] sanitize::SanitizeError),
    #[error(transparent)]
    Args(#[from] args::ArgsError),
    #[error(transparent)]
    Chroot(#[from] chroot::ChrootError),
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
    #[error(transparent)]
    Network(#[from] network::NetworkError),
    /// A failure of the network's own thread (step 4).
    #[error("4 host network: {0}")]
    HostNetwork(#[source] network::NetworkError),
    /// A failure of the VMM copy's own thread (step 2).
    #[error("2 VMM copy: {0}")]
    VmmCopy(#[source] chroot::ChrootError),
    #[error("{step}: starting its thread: {source}")]
    Thread {
        step: &'static str,
        source: std::io::Error,
    },
    #[error("{step}: its thread panicked")]
    Panicked { step: &'static str },
    #[error(transparent)]
    Unshare(#[from] unshare::UnshareError),
    #[error(transparent)]
    Pivot(#[from] pivot::PivotError),
    #[error(transparent)]
    DeviceNodes(#[from] device_nodes::DeviceNodeError),
    #[error(transparent)]
    Privilege(#[from] privileges::PrivilegeError),
    #[error(transparent)]
    Landlock(#[from] landlock::LandlockError),
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    #[error(transparent)]
    Exec(#[from] exec::ExecError),
    #[error(transparent)]
    Supervise(#[from] supervise::SuperviseError),
    #[error(transparent)]
    Cleanup(#[from] cleanup::CleanupError),
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error("the supervisor (pid {0}) died before the VMM started")]
    SupervisorGone(nix::unistd::Pid),
    #[error("{error}; undoing the set-up also failed: {undo}")]
    Undo {
        error: Box<Error>,
        undo: cleanup::CleanupError,
    },
}

/// What the host-side steps leave for the split and the jail process.
struct Prepared {
    netns: Option<OwnedFd>,
    /// The firewall's netlink socket, held so that the keeper (which outlives the jail
    /// process's exec) closes the last copy: its release may wait for nf_tables' deferred
    /// clean-up, which is then not on the way to the VMM (`network::HostNetwork`). The jail
    /// process drops its own copy as soon as it is one.
    firewall: Option<jailer::nftables::Socket>,
    /// The cgroup the jail's first process is born in.
    fork_into: Option<cgroup::ForkInto>,
    userfaultfd: Option<u32>,
    seccomp: seccomp::Filters,
    landlock: Vec<landlock::PathRule>,
    /// KVM's supported CPUID for the VMM's environment (`host_cpuid`), when KVM answered.
    host_cpuid: Option<String>,
}

fn main() {
    let exit = match run() {
        Ok(exit) => exit,
        Err(e) => {
            eprintln!("jailer: {e}");
            Exit::Code(1)
        }
    };
    finish(exit)
}

fn run() -> Result<Exit, Error> {
    let mut clock = Clock::start();

    // Step 1: a clean process, and every input validated before anything is created.
    sanitize::close_inherited_fds()?;
    sanitize::clear_environment();
    sanitize::strict_umask();
    sanitize::reset_signals(true)?;
    let config = match args::parse(std::env::args_os().skip(1))? {
        Command::Help => {
            print!("{}", args::HELP);
            return Ok(Exit::Code(0));
        }
        Command::Version => {
            // Firecracker's jailer's first line (launchers parse it), then Kiln's version.
            println!(
                "Jailer v{FIRECRACKER_VERSION} (Kiln jailer {})",
                env!("CARGO_PKG_VERSION")
            );
            return Ok(Exit::Code(0));
        }
        Command::Cleanup(c) => {
            match cleanup::run_command(&c)? {
                cleanup::Cleaned::Removed => {}
                cleanup::Cleaned::Nothing => {
                    eprintln!("jailer: --id {}: nothing to clean up", c.id);
                }
                cleanup::Cleaned::NotTheJailers(dir) => eprintln!(
                    "jailer: --id {}: {} has no jail journal: not made or adopted by a jailer; left alone",
                    c.id,
                    dir.display()
                ),
            }
            return Ok(Exit::Code(0));
        }
        Command::Jail(c) => *c,
    };
    clock.enable(config.timing);
    clock.part(STEP_1, "parse");
    // A new network namespace is started now, unnamed, on a thread of its own (nothing to
    // journal until step 4 pins it): its creation overlaps the rest of steps 1 and 2.
    let early_netns = network::start_early(&config)?;
    let host_cpuid = host_cpuid::start();
    privileges::check_rlimits(&config.rlimits)?;
    let cgroups = cgroup::plan(&cgroup::Host::real()?, &config.cgroup, &config.id)?;
    clock.part(STEP_1, "cgroup plan");
    let mut seccomp = seccomp::compile(config.seccomp_policy.as_deref())?;
    if config.cgroup.limits.hugetlb_bytes.unwrap_or(0) > 0 {
        seccomp = seccomp.granting_huge_pages();
    }
    let userfaultfd = match config.userfaultfd {
        true => Some(device_nodes::userfaultfd_minor()?),
        false => None,
    };
    clock.step(STEP_1);

    // Step 2: the jail directory; from here on every host resource is journaled.
    let mut journal = chroot::create_jail_dir(&config)?;
    let host = host_side(&config, early_netns, &mut journal, &cgroups, &mut clock);
    // Joined before the split, which needs a single-threaded process; long done by now.
    let host_cpuid = host_cpuid.and_then(|t| t.join().ok().flatten());
    clock.step(HOST_CPUID);
    let mut prepared = match host {
        Ok((network, fork_into)) => Prepared {
            netns: network.ns,
            firewall: network.firewall,
            fork_into,
            userfaultfd,
            seccomp,
            landlock: landlock::path_rules(&config, userfaultfd.is_some()),
            host_cpuid,
        },
        Err(e) => return Err(undo(&journal, e, None)),
    };

    // Step 5: daemonize, and split into the jail process and its keeper.
    let fork_into = prepared.fork_into.as_ref();
    let side = match supervise::launch(&config, &mut journal, &mut clock, fork_into) {
        Ok(Role::Done(exit)) => return Ok(exit),
        Ok(Role::Jail(side)) => side,
        Err(e) => return Err(undo(&journal, e.into(), fork_into)),
    };
    clock.step("5 daemonize and split");

    // Steps 6 to 9 in the jail process; it only comes back here on failure. The keeper holds
    // a copy of the firewall's socket: dropping this one does not release it.
    drop(prepared.firewall.take());
    let mut side = side;
    let Err(error) = enter_jail(&config, &prepared, &mut side, &mut clock);
    side.fail(&error.to_string());
    Ok(Exit::Code(1))
}

/// Steps 2 to 4 on the host side: the network namespace to join, and the cgroup the jail's
/// first process is born in. Two helper threads work beside this one: the VMM copy (step 2)
/// and the network (step 4), while this thread fills the rest of the root (2) and makes the
/// cgroups (3). They share nothing but the journal, in which the intents of all three steps
/// are written first, in one write (then only the taps are journaled, through its lock).
/// Both threads are joined, whatever happened, before anything that needs a
/// single-threaded process (the split); an error comes back typed, named by its step.
fn host_side(
    config: &Config,
    early_netns: Option<network::Early>,
    journal: &mut Journal,
    cgroups: &cgroup::Plan,
    clock: &mut Clock,
) -> Result<(network::HostNetwork, Option<cgroup::ForkInto>), Error> {
    // Intent first: what step 2 makes in an adopted directory, the cgroups and the network
    // namespace, journaled before any is made.
    let made = chroot::intent(config, journal.state.adopted);
    let cgroup_intent = cgroups.intent()?;
    let netns_intent = network::intent(config)?;
    let first_cgroup = journal.state.cgroups.len();
    journal.record(|s| {
        if let Some(made) = made {
            s.made = made;
        }
        s.cgroups.extend(cgroup_intent);
        s.netns = netns_intent;
    })?;
    clock.part(STEP_2, "journal");
    chroot::make_root(config)?;
    let journal = SharedJournal::new(journal);
    let mut network_clock = clock.branch();
    let mut copy_clock = clock.branch();
    std::thread::scope(|scope| {
        let network = helper(scope, network::STEP, || {
            let network = network::prepare(config, early_netns, &journal, &mut network_clock);
            network_clock.step(network::STEP);
            network.map_err(Error::HostNetwork)
        })?;
        let copy = helper(scope, STEP_2_COPY, || {
            let copy = chroot::copy_exec_file(config);
            copy_clock.step(STEP_2_COPY);
            copy.map_err(Error::VmmCopy)
        });
        let here = copy.and_then(|copy| {
            let fork_into = root_and_cgroups(config, &journal, cgroups, first_cgroup, clock);
            joined(STEP_2_COPY, copy).and(fork_into)
        });
        // Joined whatever happened: an error of this thread comes first.
        let network = joined(network::STEP, network);
        let fork_into = here?;
        let network = network?;
        clock.step("threads joined (VMM copy, host network)");
        Ok((network, fork_into))
    })
}

/// Starts a helper thread of the host side (`step` names it in errors).
fn helper<'scope, T: Send + 'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    step: &'static str,
    f: impl FnOnce() -> Result<T, Error> + Send + 'scope,
) -> Result<std::thread::ScopedJoinHandle<'scope, Result<T, Error>>, Error> {
    std::thread::Builder::new()
        .name(step.to_owned())
        .spawn_scoped(scope, f)
        .map_err(|source| Error::Thread { step, source })
}

/// Waits for a helper thread: its result, or its panic as an error naming its step.
fn joined<T>(
    step: &'static str,
    thread: std::thread::ScopedJoinHandle<'_, Result<T, Error>>,
) -> Result<T, Error> {
    thread.join().unwrap_or(Err(Error::Panicked { step }))
}

/// Steps 2 (but the VMM copy) and 3 on the main thread, beside the helper threads.
fn root_and_cgroups(
    config: &Config,
    journal: &SharedJournal,
    cgroups: &cgroup::Plan,
    first_cgroup: usize,
    clock: &mut Clock,
) -> Result<Option<cgroup::ForkInto>, Error> {
    // Step 2 (continued): `run/` with its tmpfs, `dev/`, the bind targets.
    chroot::populate(config)?;
    clock.step(STEP_2);
    // Step 3: cgroups, limits written, this thread (which forks the jail's processes)
    // moved in before any fork (the v2 one excepted: the jail's first process is born in
    // it). Which levels it made is journaled with the next write.
    let made = cgroups.create(clock)?;
    journal
        .note(|s| cgroup::mark_done(s.cgroups.get_mut(first_cgroup..).unwrap_or_default(), made));
    let fork_into = cgroups.configure(clock)?;
    clock.step("3 cgroups");
    Ok(fork_into)
}

/// The jail process: steps 6 to 9, ending in exec.
fn enter_jail(
    config: &Config,
    prepared: &Prepared,
    side: &mut JailSide,
    clock: &mut Clock,
) -> Result<Infallible, Error> {
    // Step 6: network, mount, IPC, UTS and cgroup namespaces; hostname = id.
    let private_net = config.network.mode == args::NetnsMode::Private;
    unshare::enter(&config.id, prepared.netns.as_ref(), private_net)?;
    clock.step("6 jail namespaces");

    // `--userns` writes its id maps through /proc, which the jail does not have.
    let proc_self = match config.userns {
        true => Some(privileges::open_proc_self()?),
        false => None,
    };

    // Step 7: pivot_root into the jail; only the device nodes the VMM needs; then the root
    // stacked on itself and chrooted into (no user namespace can be created from a chroot).
    // `--userns` creates its user namespace in step 8 and forbids nested ones there.
    pivot::into_jail(&config.chroot_dir(), &config.binds)?;
    device_nodes::create(config.uid, config.gid, prepared.userfaultfd)?;
    if !config.userns {
        pivot::chroot_in_place()?;
    }
    clock.step("7 pivot_root and device nodes");

    // Step 8: limits, identity, capabilities, Landlock.
    privileges::set_rlimits(&config.rlimits)?;
    if config.diagnose_without.contains(&args::Layer::Privileges) {
        eprintln!("jailer: WARNING: --diagnose-without privileges: the VMM keeps root and every capability (diagnosis only)");
    } else {
        privileges::drop_to(config.uid, config.gid)?;
    }
    if let Some(proc_self) = &proc_self {
        privileges::enter_user_namespace(config.uid, config.gid, proc_self)?;
    }
    if let Some(parent) = side.supervisor {
        if !privileges::die_with_parent(parent)? {
            return Err(Error::SupervisorGone(parent));
        }
    }
    privileges::no_new_privs()?;
    if config.diagnose_without.contains(&args::Layer::Landlock) {
        eprintln!(
            "jailer: WARNING: --diagnose-without landlock: no Landlock ruleset (diagnosis only)"
        );
    } else {
        landlock::enforce(
            &prepared.landlock,
            &config.landlock.tcp_connect,
            &config.landlock.tcp_bind,
        )?;
    }
    clock.step("8 privileges and landlock");

    // Step 9: the keeper has journaled this process, written the pid file and left the
    // jail's cgroups meanwhile (`supervise`); then seccomp and exec (timed up to here:
    // `exec ARGS`).
    side.wait_for_keeper();
    clock.step("9 keeper ready");

    let mut command =
        exec::VmmCommand::new(&config.exec_name, &config.id, clock, &config.vmm_args)?;
    if let Some(cpuid) = &prepared.host_cpuid {
        command.env(host_cpuid::ENV, cpuid)?;
    }
    clock.step(&format!("exec {}", command.args().join(" ")));
    sanitize::reset_signals(false)?;
    sanitize::cloexec_inherited_fds()?;
    side.detach_terminals()?;
    prepared.seccomp.apply()?;
    side.about_to_exec();
    Err(command.exec().into())
}

/// Removes what the journal records after a failure on the host side (this process left
/// the cgroups it joined first; it never joined `never_joined`).
fn undo(journal: &Journal, error: Error, never_joined: Option<&cgroup::ForkInto>) -> Error {
    for record in &journal.state.cgroups {
        if never_joined.is_some_and(|f| f.dir == record.dir) {
            continue;
        }
        let _ = cgroup::evacuate(record, std::process::id());
    }
    match cleanup::remove(
        &journal.state,
        std::time::Instant::now() + cleanup::REAP_WAIT,
    ) {
        Ok(()) => error,
        Err(undo) => Error::Undo {
            error: Box::new(error),
            undo,
        },
    }
}

/// Exits with a code, or dies of the VMM's signal (so the caller sees the same status).
fn finish(exit: Exit) -> ! {
    let signal = match exit {
        Exit::Code(code) => std::process::exit(code),
        Exit::Signal(signal) => signal,
    };
    // No core: the VMM's fate, not ours.
    let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
    // SAFETY: signal takes plain integers and installs the default action (no handler code
    // runs); that action ends the process.
    unsafe { libc::signal(signal, libc::SIG_DFL) };
    if let Ok(blocked) = nix::sys::signal::Signal::try_from(signal) {
        // The supervisor blocked the signals it forwards.
        let _ = sanitize::set_signal_mask(nix::sys::signal::SigmaskHow::SIG_UNBLOCK, &[blocked]);
    }
    // SAFETY: as above.
    unsafe { libc::raise(signal) };
    std::process::exit(128 + signal)
}
