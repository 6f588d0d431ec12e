//! Rows 1 (`--only api`): process start → the API socket answers (Kiln and Firecracker
//! `GET /`, QEMU's QMP greeting), and the CPU time spent until then.

use crate::launch::{firecracker_api_cmd, qemu_cmd};
use crate::opts::Opts;
use crate::process::{cpu_ms, ms, signal, start, TIMEOUT};
use crate::socket::poll_socket;
use crate::table::{measured, Table};
use nix::sys::signal::Signal;
use std::fs;
use std::process::Command;

pub fn bench_api(opts: &Opts, t: &mut Table) -> Result<(), String> {
    eprintln!("== 1. process start -> API socket answers (Kiln GET /, QEMU QMP greeting)");
    let (mut kw, mut kc, mut qw, mut qc) = (vec![], vec![], vec![], vec![]);
    let (mut fw, mut fc) = (vec![], vec![]);
    for i in 0..opts.runs {
        let sock = opts.work.join(format!("api-{i}.sock"));
        let mut c = Command::new(&opts.vmm);
        c.arg("--api-sock").arg(&sock);
        let s = start(c, false)?;
        let at = poll_socket(
            &sock,
            b"GET / HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n",
            s.t0 + TIMEOUT,
        )?;
        kc.push(cpu_ms(s.child.id()));
        kw.push(ms(at - s.t0));
        signal(s.child.id(), Signal::SIGTERM);
        s.finish(TIMEOUT)?;
        let _ = fs::remove_file(&sock);

        let qsock = opts.work.join(format!("qmp-{i}.sock"));
        let qmp = format!("unix:{},server=on,wait=off", qsock.display());
        if let Some(c) = qemu_cmd(opts, "halt", 1, &["-S", "-qmp", &qmp]) {
            let s = start(c, false)?;
            let at = poll_socket(&qsock, b"", s.t0 + TIMEOUT)?;
            qc.push(cpu_ms(s.child.id()));
            qw.push(ms(at - s.t0));
            signal(s.child.id(), Signal::SIGTERM);
            s.finish(TIMEOUT)?;
            let _ = fs::remove_file(&qsock);
        }

        // Firecracker refuses a socket path that exists.
        let fsock = opts.work.join(format!("fc-api-{i}.sock"));
        let _ = fs::remove_file(&fsock);
        if let Some(c) = firecracker_api_cmd(opts, &fsock) {
            let s = start(c, false)?;
            let at = poll_socket(
                &fsock,
                b"GET / HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n",
                s.t0 + TIMEOUT,
            )?;
            fc.push(cpu_ms(s.child.id()));
            fw.push(ms(at - s.t0));
            signal(s.child.id(), Signal::SIGKILL);
            s.finish(TIMEOUT)?;
            let _ = fs::remove_file(&fsock);
        }
    }
    t.add_peers(
        "1 process start → API answers",
        "ms",
        &kw,
        (measured(&qw), measured(&fw)),
        "",
    );
    t.add_peers(
        "1 CPU time to API answer",
        "CPU ms",
        &kc,
        (measured(&qc), measured(&fc)),
        "Firecracker spec: ≤ 8 CPU ms",
    );
    Ok(())
}
