//! `kiln-bench`: Kiln's VMM and jailer measured side by side with QEMU's `microvm` machine on
//! the same tiny test guest (project issue #10). Run through `scripts/bench.sh`, which builds
//! the release binaries and passes their paths; the results are described in
//! `docs/benchmarks.md`.
//!
//! Every time is taken on CLOCK_MONOTONIC in this process, from just before `spawn` to the
//! event (the API socket answering, the first byte read from the guest's serial pipe, the
//! process reaped). CPU times are the process's CPU-time clock (`clock_getcpuclockid`: the
//! scheduler's run time of all its threads, ended ones included, in ns) read at the event. Memory is `/proc/<pid>/smaps_rollup` minus the
//! guest RAM mapping's own Rss/Pss (the mapping of exactly the guest memory size).
//!
//! Modules: [`opts`] (the command line), [`launch`] (the peers' command lines: Kiln's VMM and
//! jailer, QEMU, Firecracker), [`layered_peer`] (Firecracker's jailer with the layers of
//! Kiln's full profile), [`process`] (spawning and watching them), [`socket`] (API socket
//! clients), [`measure`] (one module per measurement), [`host`] (leaks, host load, the
//! machine line), [`peer_binary`] (whether the Firecracker peer is built as it ships),
//! [`stats`] and [`table`] (the output).

mod host;
mod launch;
mod layered_peer;
mod measure;
mod opts;
mod peer_binary;
mod process;
mod socket;
mod stats;
mod table;

use kiln_argv::ArgvError;
use opts::{parse_args, Parsed, USAGE};
use std::fs;
use table::Table;

fn main() {
    let opts = match parse_args(std::env::args_os().skip(1)) {
        Ok(Parsed::Run(o)) => o,
        Ok(Parsed::Help) => {
            print!("{USAGE}");
            std::process::exit(0);
        }
        Err(e @ (ArgvError::UnknownFlag(_) | ArgvError::Positional(_))) => {
            eprintln!("kiln-bench: {e}\n\n{USAGE}");
            std::process::exit(2);
        }
        Err(e) => {
            eprintln!("kiln-bench: {e}");
            std::process::exit(2);
        }
    };
    for p in [&opts.vmm, &opts.jailer, &opts.tiny, &opts.profile] {
        if !p.is_file() {
            eprintln!("kiln-bench: {} does not exist", p.display());
            std::process::exit(2);
        }
    }
    let _ = fs::create_dir_all(&opts.work);
    let _ = fs::create_dir_all(&opts.base);
    // The jailed VMM reads its config as its own uid.
    let _ = fs::set_permissions(
        &opts.work,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    );
    let machine = host::machine();
    eprintln!("kiln-bench: {machine}; {} runs each", opts.runs);
    if opts.qemu.is_none() {
        eprintln!("kiln-bench: no qemu-system-x86_64: QEMU columns stay empty");
    }
    let peer_notes: Vec<String> = [
        ("VMM", &opts.firecracker),
        ("jailer", &opts.firecracker_jailer),
    ]
    .into_iter()
    .filter_map(|(what, path)| peer_binary::note(what, path.as_ref()?))
    .collect();
    for n in &peer_notes {
        eprintln!("kiln-bench: {n}");
    }
    let mut t = Table::default();
    let mut failed = false;
    for (name, f) in measure::ALL {
        if opts.wants(name) {
            if let Err(e) = f(&opts, &mut t) {
                eprintln!("kiln-bench: {name}: {e}");
                failed = true;
            }
        }
    }
    let _ = fs::remove_dir_all(&opts.work);
    host::remove_parent_cgroups();
    layered_peer::remove_parent_cgroups();
    let _ = fs::remove_dir(opts.base.join("vmm"));
    // Firecracker's jails (`<base>/<its file name>/<id>`) are removed after each run.
    if let Some(name) = opts.firecracker.as_ref().and_then(|f| f.file_name()) {
        let _ = fs::remove_dir(opts.base.join(name));
    }
    let _ = fs::remove_dir(&opts.base);
    println!("Machine: {machine}");
    println!("Runs: {} per row unless the row says otherwise", opts.runs);
    for n in &peer_notes {
        println!("{n}");
    }
    println!();
    print!("{}", t.render());
    if failed {
        std::process::exit(1);
    }
}
