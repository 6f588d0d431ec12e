//! Rows 3 (`--only jail`): the jailer's exec → the VMM's exec with the full default profile,
//! each layer's time (`jailer --timing`), and the first serial byte with and without the
//! network and PID namespace layers; beside them, Firecracker's jailer with its default jail
//! (`--firecracker-jailer`).

use crate::launch::{
    firecracker_jailer_cmd, jailer_cmd, vmm_config_cmd, write_vm_config, Layers, FULL,
};
use crate::opts::Opts;
use crate::process::{ms, start, TIMEOUT};
use crate::table::Table;
use std::collections::BTreeMap;
use std::path::Path;

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
    let mut direct = vec![];
    let mut fc = vec![];
    let direct_cfg = write_vm_config(opts, "print", &opts.tiny, "print", 1);
    for i in 0..opts.runs {
        let mut s = start(jailer_cmd(opts, i, &cfg, FULL), true)?;
        let at = s.first_byte()?;
        first.push(ms(at - s.t0));
        let (code, err) = s.finish(TIMEOUT)?;
        if code != Some(0) {
            return Err(format!("jailer exit {code:?}:\n{}", err.join("\n")));
        }
        let mut exec_at = None;
        for (name, d, at) in err.iter().filter_map(|l| parse_timing(l)) {
            if name.starts_with("exec") {
                exec_at = Some(at);
            } else {
                steps.entry(name).or_default().push(d);
            }
        }
        to_exec.extend(exec_at);

        let mut s = start(
            jailer_cmd(
                opts,
                i,
                &cfg,
                Layers {
                    netns: false,
                    pidns: true,
                },
            ),
            false,
        )?;
        let at = s.first_byte()?;
        first_no_net.push(ms(at - s.t0));
        s.finish(TIMEOUT)?;

        let mut s = start(
            jailer_cmd(
                opts,
                i,
                &cfg,
                Layers {
                    netns: true,
                    pidns: false,
                },
            ),
            false,
        )?;
        let at = s.first_byte()?;
        first_no_pid.push(ms(at - s.t0));
        s.finish(TIMEOUT)?;

        let mut s = start(vmm_config_cmd(opts, &direct_cfg), false)?;
        let at = s.first_byte()?;
        direct.push(ms(at - s.t0));
        s.finish(TIMEOUT)?;

        if let Some(jail) = firecracker_jailer_cmd(opts, i, &cfg)? {
            let result = start(jail.cmd, false).and_then(|mut s| {
                let d = s.first_byte()? - s.t0;
                s.finish(TIMEOUT)?;
                Ok(d)
            });
            let _ = std::fs::remove_dir_all(&jail.dir);
            fc.push(ms(result?));
        }
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
        (None, (!fc.is_empty()).then_some(fc.as_slice())),
        "Firecracker: its jailer's default jail (no cgroup, PID or network namespace)",
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
    t.add("3 … no jail (VMM spawned directly)", "ms", &direct, None);
    Ok(())
}
