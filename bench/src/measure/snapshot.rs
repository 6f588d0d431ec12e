//! Rows 8 (`--only snapshot`): snapshots of the counting tiny guest (`kiln.test=count`, a
//! line every 1M TSC cycles, so the first byte after a resume comes at once), for a
//! 128 MiB and a 1 GiB guest: `PUT /snapshot/create` (Full) time, without and with a key
//! (the memory hashed), the memory and state files' sizes; `PUT /snapshot/load` (`File`
//! backend, `resume_vm`) → the first serial byte of the new VMM, without and with a key
//! (the memory file hashed before the restore); the same guest booted fresh
//! (`InstanceStart` → first byte), the figure a restore competes with; and Firecracker's
//! own create and restore of the same guest when `--firecracker` is given. Then, with
//! `--kiln`, the worker's cold invocations booted and restored ([`super::cold_start`]).

use crate::opts::Opts;
use crate::process::{ms, start, Started, TIMEOUT};
use crate::socket::{api_request, poll_socket};
use crate::table::Table;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// TSC cycles between two `count` lines: about 0.4 ms.
const PERIOD: u64 = 1_000_000;
/// 1 GiB guests are measured this many times at most (creating one writes up to 1 GiB).
const BIG_RUNS: usize = 5;

/// Which VMM is measured.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Peer {
    Kiln,
    Firecracker,
}

struct Ctx<'a> {
    opts: &'a Opts,
    fc: Option<&'a Path>,
    key: PathBuf,
    n: usize,
}

impl Ctx<'_> {
    fn sock(&mut self, what: &str) -> PathBuf {
        self.n += 1;
        self.opts.work.join(format!("snap-{what}-{}.sock", self.n))
    }

    /// The VMM (or Firecracker) serving its API on a new socket; returns it, ready.
    fn api(&mut self, peer: Peer, keyed: bool) -> Result<(Started, PathBuf), String> {
        let sock = self.sock("api");
        let mut c = match peer {
            Peer::Kiln => Command::new(&self.opts.vmm),
            Peer::Firecracker => Command::new(self.fc.ok_or("no Firecracker")?),
        };
        c.arg("--api-sock").arg(&sock);
        match peer {
            // Firecracker logs on stdout, where the serial console is: no log lines.
            Peer::Firecracker => {
                c.args(["--level", "Off"]);
            }
            Peer::Kiln if keyed => {
                c.arg("--snapshot-key-file").arg(&self.key);
            }
            Peer::Kiln => {}
        }
        let s = start(c, true)?;
        poll_socket(&sock, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", s.t0 + TIMEOUT)?;
        Ok((s, sock))
    }

    /// Configures the counting guest of `mib` MiB and starts it (boot time measured).
    fn boot(
        &mut self,
        peer: Peer,
        mib: u32,
        keyed: bool,
    ) -> Result<(Started, PathBuf, f64), String> {
        let (mut s, sock) = self.api(peer, keyed)?;
        let mc = serde_json::json!({"vcpu_count": 1, "mem_size_mib": mib});
        api_request(&sock, "PUT", "/machine-config", &mc.to_string())?;
        let boot = serde_json::json!({
            "kernel_image_path": self.opts.tiny,
            "boot_args": format!("console=ttyS0 kiln.test=count kiln.period={PERIOD}"),
        });
        api_request(&sock, "PUT", "/boot-source", &boot.to_string())?;
        let t = Instant::now();
        api_request(
            &sock,
            "PUT",
            "/actions",
            r#"{"action_type":"InstanceStart"}"#,
        )?;
        let at = s.first_byte()?;
        Ok((s, sock, ms(at - t)))
    }
}

/// A snapshot made: its files and what creating it cost.
struct Made {
    state: PathBuf,
    mem: PathBuf,
    create_ms: f64,
}

fn create(sock: &Path, dir: &Path, tag: &str) -> Result<Made, String> {
    let state = dir.join(format!("{tag}.snap"));
    let mem = dir.join(format!("{tag}.mem"));
    let body = serde_json::json!({
        "snapshot_type": "Full", "snapshot_path": state, "mem_file_path": mem
    });
    let t = Instant::now();
    api_request(sock, "PUT", "/snapshot/create", &body.to_string())?;
    Ok(Made {
        state,
        mem,
        create_ms: ms(t.elapsed()),
    })
}

/// Loads `m` into a fresh VMM (resumed): (request → answer, request → first serial byte).
fn load(ctx: &mut Ctx<'_>, peer: Peer, keyed: bool, m: &Made) -> Result<(f64, f64), String> {
    let (mut s, sock) = ctx.api(peer, keyed)?;
    let body = serde_json::json!({
        "snapshot_path": m.state,
        "mem_backend": {"backend_type": "File", "backend_path": m.mem},
        "resume_vm": true,
    });
    let t = Instant::now();
    api_request(&sock, "PUT", "/snapshot/load", &body.to_string())?;
    let answered = ms(t.elapsed());
    let at = s.first_byte()?;
    let first = ms(at - t);
    stop(s)?;
    let _ = fs::remove_file(&sock);
    Ok((answered, first))
}

fn stop(s: Started) -> Result<(), String> {
    crate::process::signal(s.child.id(), nix::sys::signal::Signal::SIGKILL);
    s.finish(TIMEOUT).map(|_| ())
}

/// Bytes a file takes on disk, in MiB.
fn disk_mib(p: &Path) -> f64 {
    fs::metadata(p).map_or(0.0, |m| (m.blocks() * 512) as f64 / (1 << 20) as f64)
}

#[derive(Default)]
struct Series {
    boot: Vec<f64>,
    create: Vec<f64>,
    create_keyed: Vec<f64>,
    mem_disk: Vec<f64>,
    state_kib: Vec<f64>,
    answer: Vec<f64>,
    first: Vec<f64>,
    first_keyed: Vec<f64>,
}

/// One guest size, `runs` times, for `peer`.
fn measure(ctx: &mut Ctx<'_>, peer: Peer, mib: u32, runs: usize) -> Result<Series, String> {
    let dir = ctx.opts.work.join(format!("snap-{mib}"));
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut out = Series::default();
    let keyed = peer == Peer::Kiln;
    let (vm, sock, _) = ctx.boot(peer, mib, false)?;
    let (vm_keyed, sock_keyed) = if keyed {
        let (v, s, _) = ctx.boot(peer, mib, true)?;
        api_request(&s, "PATCH", "/vm", r#"{"state":"Paused"}"#)?;
        (Some(v), Some(s))
    } else {
        (None, None)
    };
    api_request(&sock, "PATCH", "/vm", r#"{"state":"Paused"}"#)?;
    for i in 0..runs {
        let (fresh, fresh_sock, boot_ms) = ctx.boot(peer, mib, false)?;
        out.boot.push(boot_ms);
        stop(fresh)?;
        let _ = fs::remove_file(&fresh_sock);
        let m = create(&sock, &dir, &format!("plain-{i}"))?;
        out.create.push(m.create_ms);
        out.mem_disk.push(disk_mib(&m.mem));
        out.state_kib
            .push(fs::metadata(&m.state).map_or(0.0, |m| m.len() as f64 / 1024.0));
        let (answer, first) = load(ctx, peer, false, &m)?;
        out.answer.push(answer);
        out.first.push(first);
        let _ = (fs::remove_file(&m.state), fs::remove_file(&m.mem));
        if let Some(s) = &sock_keyed {
            let m = create(s, &dir, &format!("keyed-{i}"))?;
            out.create_keyed.push(m.create_ms);
            let (_, first) = load(ctx, peer, true, &m)?;
            out.first_keyed.push(first);
            let _ = (fs::remove_file(&m.state), fs::remove_file(&m.mem));
        }
    }
    stop(vm)?;
    if let Some(v) = vm_keyed {
        stop(v)?;
    }
    let _ = fs::remove_dir_all(&dir);
    Ok(out)
}

pub fn bench_snapshot(opts: &Opts, t: &mut Table) -> Result<(), String> {
    eprintln!("== 8. snapshots: create, load → first serial byte");
    let key = opts.work.join("snapshot.key");
    fs::write(&key, [0x5a; 32]).map_err(|e| format!("{}: {e}", key.display()))?;
    let mut ctx = Ctx {
        opts,
        fc: opts.firecracker.as_deref(),
        key,
        n: 0,
    };
    for (mib, runs) in [(128u32, opts.runs), (1024, opts.runs.min(BIG_RUNS))] {
        let k = measure(&mut ctx, Peer::Kiln, mib, runs)?;
        let f = match ctx.fc {
            Some(_) => Some(measure(&mut ctx, Peer::Firecracker, mib, runs)?),
            None => None,
        };
        let fc = |pick: fn(&Series) -> &Vec<f64>| f.as_ref().map(|s| pick(s).as_slice());
        let size = if mib >= 1024 {
            "1 GiB".to_string()
        } else {
            format!("{mib} MiB")
        };
        t.add_firecracker(
            &format!("8 snapshot/create Full, {size} guest"),
            "ms",
            &k.create,
            fc(|s| &s.create),
            "request → answer; the VM paused",
        );
        t.add_firecracker(
            &format!("8 snapshot/create Full, {size}, authenticated"),
            "ms",
            &k.create_keyed,
            None,
            "HMAC-SHA256 with --snapshot-key-file: every 2 MiB chunk hashed as it is written",
        );
        t.add_firecracker(
            &format!("8 memory file on disk, {size} guest"),
            "MiB",
            &k.mem_disk,
            fc(|s| &s.mem_disk),
            "apparent size = guest memory for both; Kiln leaves zero pages as holes",
        );
        t.add_firecracker(
            &format!("8 state file, {size} guest"),
            "KiB",
            &k.state_kib,
            fc(|s| &s.state_kib),
            "",
        );
        t.add_firecracker(
            &format!("8 snapshot/load (File, resume_vm) request → answer, {size}"),
            "ms",
            &k.answer,
            fc(|s| &s.answer),
            "a fresh VMM process, its API already up",
        );
        t.add_firecracker(
            &format!("8 snapshot/load → first serial byte after resume, {size}"),
            "ms",
            &k.first,
            fc(|s| &s.first),
            "the guest prints every ~0.4 ms",
        );
        t.add_firecracker(
            &format!("8 … authenticated (memory file hashed before the restore), {size}"),
            "ms",
            &k.first_keyed,
            None,
            "",
        );
        t.add_firecracker(
            &format!("8 booted instead: InstanceStart → first serial byte, {size}"),
            "ms",
            &k.boot,
            fc(|s| &s.boot),
            "what a restore competes with (the tiny guest boots in ~7 instructions)",
        );
    }
    let _ = fs::remove_file(&ctx.key);
    super::cold_start::bench_cold_starts(opts, t)
}
