//! Rows 3 (`--only jail`): the jailer's exec → the VMM's exec with the full default profile,
//! each layer's time (`jailer --timing`), and the first serial byte with and without the
//! network and PID namespace layers, and beside another live jail; the CPU of each jailed
//! start (jail, VMM, boot to the guest's reset, clean-up). Beside them, Firecracker's jailer
//! (`--firecracker-jailer`) twice: with its default jail, and with the layers of Kiln's full
//! profile that it has flags for (`layered_peer`: like with like).
//!
//! "Beside a live jail": a second full-profile jail (its guest halted, no CPU) runs while the
//! measured one starts, as on a worker host that serves anything. The netfilter hooks' static
//! keys are host-wide: the first firewall on a host switches them on (the kernel patches its
//! code, interrupting every CPU), the last one's namespace switches them off when it goes, so
//! each of the sequential rows above pays that, and a jail started beside another does not.

use crate::host::children_cpu_ms;
use crate::launch::{
    firecracker_jailer_cmd, jailer_cmd, vmm_config_cmd, write_vm_config, Layers, FULL,
};
use crate::layered_peer;
use crate::opts::Opts;
use crate::process::{ms, signal, start, Started, TIMEOUT};
use crate::table::{measured, Table};
use nix::sys::signal::Signal;
use std::collections::BTreeMap;
use std::path::Path;

/// The neighbour jail's number (its id and uid), apart from the measured runs'.
const NEIGHBOUR: usize = 9_999;
/// How long the neighbour runs before the measured jail starts.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(50);
/// How long after the neighbour's exit its network namespace is taken to be gone (the kernel
/// destroys namespaces in a work queue, after RCU grace periods: ~10–30 ms here).
const NAMESPACES_GONE: std::time::Duration = std::time::Duration::from_millis(100);

fn parse_timing(line: &str) -> Option<(String, f64, f64)> {
    let rest = line.strip_prefix("jailer timing: ")?;
    let (name, rest) = rest.rsplit_once(": ")?;
    let d: f64 = rest.split_whitespace().next()?.parse().ok()?;
    let at: f64 = rest
        .split("(at ")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let name = if name.starts_with("exec ") {
        "exec (step 9 → execve)".to_string()
    } else {
        name.to_string()
    };
    Some((name, d / 1e3, at / 1e3))
}

pub fn bench_jail(opts: &Opts, t: &mut Table) -> Result<(), String> {
    eprintln!("== 3. jailer exec -> VMM exec, full default profile, per layer");
    let cfg = write_vm_config(opts, "jail-print", Path::new("/tiny.elf"), "print", 1);
    let mut steps: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut to_exec = vec![];
    let mut first = vec![];
    let mut first_no_net = vec![];
    let mut first_no_pid = vec![];
    let mut first_beside = vec![];
    let mut direct = vec![];
    let mut fc = vec![];
    let (mut cpu, mut fc_cpu) = (vec![], vec![]);
    let (mut fc_layered, mut fc_layered_cpu) = (vec![], vec![]);
    let direct_cfg = write_vm_config(opts, "print", &opts.tiny, "print", 1);
    let halt_cfg = write_vm_config(opts, "jail-halt", Path::new("/tiny.elf"), "halt", 1);
    for i in 0..opts.runs {
        let cpu0 = children_cpu_ms();
        let mut s = start(jailer_cmd(opts, i, &cfg, FULL), true)?;
        let at = s.first_byte()?;
        first.push(ms(at - s.t0));
        let (code, err) = s.finish(TIMEOUT)?;
        if code != Some(0) {
            return Err(format!("jailer exit {code:?}:\n{}", err.join("\n")));
        }
        cpu.push(children_cpu_ms() - cpu0);
        let mut exec_at = None;
        for (name, d, at) in err.iter().filter_map(|l| parse_timing(l)) {
            if name.starts_with("exec") {
                exec_at = Some(at);
            } else {
                steps.entry(name).or_default().push(d);
            }
        }
        to_exec.extend(exec_at);

        let no_net = Layers {
            netns: false,
            pidns: true,
        };
        first_no_net.push(first_byte_ms(jailer_cmd(opts, i, &cfg, no_net))?);
        let no_pid = Layers {
            netns: true,
            pidns: false,
        };
        first_no_pid.push(first_byte_ms(jailer_cmd(opts, i, &cfg, no_pid))?);
        direct.push(first_byte_ms(vmm_config_cmd(opts, &direct_cfg))?);

        if let Some(jail) = firecracker_jailer_cmd(opts, i, &cfg)? {
            let cpu0 = children_cpu_ms();
            let result = start(jail.cmd, false).and_then(|mut s| {
                let d = s.first_byte()? - s.t0;
                s.finish(TIMEOUT)?;
                Ok(d)
            });
            fc_cpu.push(children_cpu_ms() - cpu0);
            let _ = std::fs::remove_dir_all(&jail.dir);
            fc.push(ms(result?));
        }
        if let Some(jail) = layered_peer::stage(opts, i, &cfg)? {
            let m = jail.measure()?;
            fc_layered.push(m.first_byte_ms);
            fc_layered_cpu.push(m.cpu_ms);
        }

        // Last, so that the next run's rows start without the neighbour: its network
        // namespace (and with it the hooks) goes in the kernel's own time after it exits.
        let neighbour = start_neighbour(opts, &halt_cfg)?;
        let beside = first_byte_ms(jailer_cmd(opts, i, &cfg, FULL));
        stop_neighbour(neighbour)?;
        first_beside.push(beside?);
        std::thread::sleep(NAMESPACES_GONE);
    }
    t.add_note(
        "3 jailer exec → VMM exec (full default profile)",
        "ms",
        &to_exec,
        None,
        "jailer --timing, `at` of the exec step",
    );
    for (name, v) in &steps {
        t.add(&format!("3 · layer: {name}"), "ms", v, None);
    }
    t.add_peers(
        "3 jailer spawn → first serial byte, full profile",
        "ms",
        &first,
        (None, measured(&fc)),
        "Firecracker: its jailer's default jail (no cgroup, PID or network namespace)",
    );
    t.add_peers(
        "3 … full profile, vs Firecracker's jailer with the same layers",
        "ms",
        &first,
        (None, measured(&fc_layered)),
        "Firecracker: --cgroup (the profile's cpu, memory and pids limits) --resource-limit (no-file, fsize) --new-pid-ns --netns: a namespace with the same firewall, made ahead and not timed (a lower bound for Firecracker)",
    );
    t.add_peers(
        "3 CPU per jailed start, full profile: jail, VMM, boot to the guest's reset, clean-up",
        "CPU ms",
        &cpu,
        (None, measured(&fc_cpu)),
        "getrusage(RUSAGE_CHILDREN) delta; Firecracker: its default jail (its jailer removes nothing)",
    );
    t.add_peers(
        "3 CPU per jailed start, vs Firecracker's jailer with the same layers",
        "CPU ms",
        &cpu,
        (None, measured(&fc_layered_cpu)),
        "Firecracker's processes only: its namespace, firewall and clean-up are made and removed by the bench, not counted",
    );
    t.add_note(
        "3 … --share-host-netns (no netns, no firewall)",
        "ms",
        &first_no_net,
        None,
        "cost of the network layer = difference of medians",
    );
    t.add_note(
        "3 … without --new-pid-ns",
        "ms",
        &first_no_pid,
        None,
        "cost of the PID namespace layer = difference",
    );
    t.add_note(
        "3 … beside a live jail (full profile)",
        "ms",
        &first_beside,
        None,
        "another full-profile jail running meanwhile: netfilter's hooks already on (module doc)",
    );
    t.add("3 … no jail (VMM spawned directly)", "ms", &direct, None);
    Ok(())
}

/// Spawn → the guest's first serial byte (ms) of a Kiln jail or VMM, which must then exit 0
/// (the tiny guest's `print` ends with a reset).
fn first_byte_ms(cmd: std::process::Command) -> Result<f64, String> {
    let mut s = start(cmd, true)?;
    let d = s.first_byte()? - s.t0;
    match s.finish(TIMEOUT)? {
        (Some(0), _) => Ok(ms(d)),
        (code, err) => Err(format!("exit {code:?}:\n{}", err.join("\n"))),
    }
}

/// The jail [`NEIGHBOUR`] with the full profile, its guest halted once it has printed.
fn start_neighbour(opts: &Opts, cfg: &Path) -> Result<Started, String> {
    let mut s = start(jailer_cmd(opts, NEIGHBOUR, cfg, FULL), false)?;
    s.first_byte()?;
    // What its start left to finish (its jailer's keeper, the firewall socket's release,
    // its VMM's threads) is done before the measured jail starts.
    std::thread::sleep(SETTLE);
    Ok(s)
}

/// SIGTERM to the neighbour's jailer, which removes its jail.
fn stop_neighbour(s: Started) -> Result<(), String> {
    signal(s.child.id(), Signal::SIGTERM);
    match s.finish(TIMEOUT)? {
        (Some(0), _) => Ok(()),
        (code, _) => Err(format!(
            "the neighbour jail exited with {code:?} after SIGTERM"
        )),
    }
}
