//! Rows 2 (`--only serial`): process start → the first serial byte (config file / QEMU
//! command line), its CPU time, and `InstanceStart` → first byte in API mode.

use crate::launch::{firecracker_config_cmd, qemu_cmd, vmm_config_cmd, write_vm_config};
use crate::opts::Opts;
use crate::process::{cpu_ms, ms, start, TIMEOUT};
use crate::socket::{api_request, poll_socket};
use crate::table::{measured, Table};
use std::fs;
use std::process::Command;
use std::time::Instant;

pub fn bench_serial(opts: &Opts, t: &mut Table) -> Result<(), String> {
    eprintln!("== 2. start -> first serial byte");
    let cfg = write_vm_config(opts, "print", &opts.tiny, "print", 1);
    let (mut kw, mut kc, mut ka, mut qw, mut qc) = (vec![], vec![], vec![], vec![], vec![]);
    let (mut fw, mut fc) = (vec![], vec![]);
    for i in 0..opts.runs {
        let mut s = start(vmm_config_cmd(opts, &cfg), false)?;
        let at = s.first_byte()?;
        kc.push(cpu_ms(s.child.id()));
        kw.push(ms(at - s.t0));
        s.finish(TIMEOUT)?;

        // API mode: InstanceStart → first byte.
        let sock = opts.work.join(format!("is-{i}.sock"));
        let mut c = Command::new(&opts.vmm);
        c.arg("--api-sock").arg(&sock);
        let mut s = start(c, false)?;
        poll_socket(&sock, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", s.t0 + TIMEOUT)?;
        let boot = serde_json::json!({
            "kernel_image_path": opts.tiny, "boot_args": "kiln.test=print"
        });
        api_request(&sock, "PUT", "/boot-source", &boot.to_string())?;
        let mc = serde_json::json!({"vcpu_count": 1, "mem_size_mib": opts.mem_mib});
        api_request(&sock, "PUT", "/machine-config", &mc.to_string())?;
        let t_start = Instant::now();
        api_request(
            &sock,
            "PUT",
            "/actions",
            r#"{"action_type":"InstanceStart"}"#,
        )?;
        let at = s.first_byte()?;
        ka.push(ms(at - t_start));
        s.finish(TIMEOUT)?;
        let _ = fs::remove_file(&sock);

        if let Some(c) = qemu_cmd(opts, "print", 1, &[]) {
            let mut s = start(c, false)?;
            let at = s.first_byte()?;
            qc.push(cpu_ms(s.child.id()));
            qw.push(ms(at - s.t0));
            s.finish(TIMEOUT)?;
        }
        // The config has no Kiln-only field: Firecracker boots the same guest from it.
        if let Some(c) = firecracker_config_cmd(opts, &cfg) {
            let mut s = start(c, false)?;
            let at = s.first_byte()?;
            fc.push(cpu_ms(s.child.id()));
            fw.push(ms(at - s.t0));
            s.finish(TIMEOUT)?;
        }
    }
    t.add_peers(
        "2 process start → first serial byte (config file / QEMU command line)",
        "ms",
        &kw,
        (measured(&qw), measured(&fw)),
        "",
    );
    t.add_peers(
        "2 CPU time to first serial byte",
        "CPU ms",
        &kc,
        (measured(&qc), measured(&fc)),
        "",
    );
    t.add_note(
        "2 InstanceStart request → first serial byte (API mode)",
        "ms",
        &ka,
        None,
        "no QEMU peer (QEMU has no pre-boot configuration API)",
    );
    Ok(())
}
