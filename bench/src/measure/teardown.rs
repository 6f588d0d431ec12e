//! Rows 6 (`--only teardown`): SIGTERM → the VMM gone (no jail), → the jailer gone with its
//! jail removed, and a guest reset → the jailer gone.

use crate::host::leaks;
use crate::launch::{jailer_cmd, qemu_cmd, vmm_config_cmd, write_vm_config, FULL};
use crate::opts::Opts;
use crate::process::{ms, signal, start, TIMEOUT};
use crate::table::Table;
use nix::sys::signal::Signal;
use std::path::Path;
use std::time::Instant;

pub fn bench_teardown(opts: &Opts, t: &mut Table) -> Result<(), String> {
    eprintln!("== 6. teardown: SIGTERM -> process gone (and jail removed)");
    let jcfg = write_vm_config(opts, "jail-halt", Path::new("/tiny.elf"), "halt", 1);
    let cfg = write_vm_config(opts, "halt1", &opts.tiny, "halt", 1);
    let (mut jailed, mut bare, mut qemu, mut reset) = (vec![], vec![], vec![], vec![]);
    let runs = opts.runs.min(10);
    let mut leaked = 0;
    for i in 0..runs {
        let mut s = start(jailer_cmd(opts, i, &jcfg, FULL), false)?;
        s.first_byte()?;
        let t0 = Instant::now();
        signal(s.child.id(), Signal::SIGTERM);
        s.finish(TIMEOUT)?;
        jailed.push(ms(t0.elapsed()));
        leaked += leaks(opts).len();

        let mut s = start(vmm_config_cmd(opts, &cfg), false)?;
        s.first_byte()?;
        let t0 = Instant::now();
        signal(s.child.id(), Signal::SIGTERM);
        s.finish(TIMEOUT)?;
        bare.push(ms(t0.elapsed()));

        // Guest-initiated: the print scenario prints its line, then resets; first byte →
        // the jailer gone with the jail removed (includes the guest's emulated run).
        let pcfg = write_vm_config(opts, "jail-print", Path::new("/tiny.elf"), "print", 1);
        let mut s = start(jailer_cmd(opts, i, &pcfg, FULL), false)?;
        let at = s.first_byte()?;
        s.finish(TIMEOUT)?;
        reset.push(ms(at.elapsed()));
        leaked += leaks(opts).len();

        if let Some(c) = qemu_cmd(opts, "halt", 1, &[]) {
            let mut s = start(c, false)?;
            s.first_byte()?;
            let t0 = Instant::now();
            signal(s.child.id(), Signal::SIGTERM);
            s.finish(TIMEOUT)?;
            qemu.push(ms(t0.elapsed()));
        }
    }
    let q = (!qemu.is_empty()).then_some(qemu);
    t.add("6 SIGTERM → VMM gone (no jail)", "ms", &bare, q.as_deref());
    t.add_note(
        "6 SIGTERM → jailer gone, jail removed (full profile)",
        "ms",
        &jailed,
        None,
        &format!("left over afterwards: {leaked}"),
    );
    t.add_note(
        "6 guest reset → jailer gone, jail removed",
        "ms",
        &reset,
        None,
        "from the first serial byte; includes the guest printing its line",
    );
    Ok(())
}
