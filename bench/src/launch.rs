//! The command lines of the measured peers: Kiln's VMM (config-file mode), Kiln's jailer
//! booting the tiny guest with the full default profile, QEMU's `microvm` machine, and
//! Firecracker's VMM and jailer.

use crate::opts::Opts;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The jails' uids start here (one per concurrent jail).
pub const UID_BASE: u32 = 47000;
/// The jails' cgroups go under `<bench's cgroup>/kiln-bench/`.
pub const PARENT_CGROUP: &str = "kiln-bench";

/// Writes `<work>/<name>.json`: the tiny guest (`kernel`, its path as the VMM will see it)
/// running `scenario` on `vcpus` vCPUs, with KVM's in-kernel PIT (every VM's default, and
/// Firecracker's only choice).
pub fn write_vm_config(
    opts: &Opts,
    name: &str,
    kernel: &Path,
    scenario: &str,
    vcpus: u32,
) -> PathBuf {
    write_vm_config_pit(opts, name, kernel, scenario, vcpus, true)
}

/// [`write_vm_config`], with `pit: false` the tiny guest's VM has no in-kernel PIT
/// (machine-config `"pit": false`; the guest keeps time with the TSC and needs none).
pub fn write_vm_config_pit(
    opts: &Opts,
    name: &str,
    kernel: &Path,
    scenario: &str,
    vcpus: u32,
    pit: bool,
) -> PathBuf {
    let path = opts.work.join(format!("{name}.json"));
    let mut machine = serde_json::json!({"vcpu_count": vcpus, "mem_size_mib": opts.mem_mib});
    if !pit {
        machine["pit"] = false.into();
    }
    let cfg = serde_json::json!({
        "boot-source": {
            "kernel_image_path": kernel,
            "boot_args": format!("kiln.test={scenario}"),
        },
        "machine-config": machine,
    });
    fs::write(&path, cfg.to_string()).expect("write VM config");
    path
}

/// Firecracker, unjailed, booting from the config file `cfg` without its API (its own log
/// off: it logs on stdout, where the serial console is); `None` without `--firecracker`.
/// Firecracker's parser wants a `drives` list, which Kiln's configs may leave out: the
/// file it gets is `cfg`'s copy with an empty one. `cfg` must have no Kiln-only field.
pub fn firecracker_config_cmd(opts: &Opts, cfg: &Path) -> Option<Command> {
    let fc = opts.firecracker.as_ref()?;
    let fc_cfg = cfg.with_extension("firecracker.json");
    fs::write(&fc_cfg, firecracker_json(cfg)).expect("write Firecracker's VM config");
    let mut c = Command::new(fc);
    c.arg("--config-file")
        .arg(fc_cfg)
        .args(["--no-api", "--level", "Off"]);
    Some(c)
}

/// `cfg` as Firecracker reads it: with a `drives` list (Kiln's configs may leave it out).
fn firecracker_json(cfg: &Path) -> String {
    let text = fs::read_to_string(cfg).expect("read VM config");
    let mut json: serde_json::Value = serde_json::from_str(&text).expect("parse VM config");
    if json.get("drives").is_none() {
        json["drives"] = serde_json::json!([]);
    }
    json.to_string()
}

/// Firecracker with its API on `sock` and no VM configured (its log off); `None` without
/// `--firecracker`.
pub fn firecracker_api_cmd(opts: &Opts, sock: &Path) -> Option<Command> {
    let mut c = Command::new(opts.firecracker.as_ref()?);
    c.arg("--api-sock").arg(sock).args(["--level", "Off"]);
    Some(c)
}

/// A jail made by Firecracker's jailer, and the directory to remove once it has ended.
pub struct FirecrackerJail {
    pub cmd: Command,
    /// The jail's id.
    pub id: String,
    /// `<base>/<exec file name>/<id>`: Firecracker's jailer leaves it behind.
    pub dir: PathBuf,
}

/// Firecracker's jailer with its default jail (own mount namespace, chroot with the copied
/// binary and its device nodes, the jail's uid and gid; no cgroup, PID or network namespace
/// unless asked for) booting the tiny guest from `cfg` (a config naming `/tiny.elf`) without
/// its API; `None` without `--firecracker` and `--firecracker-jailer`. Firecracker's jailer
/// leaves the kernel and the config to its caller (its docs: hard links into the chroot),
/// so they are staged here before the jailer runs: not part of the measured time.
pub fn firecracker_jailer_cmd(
    opts: &Opts,
    n: usize,
    cfg: &Path,
) -> Result<Option<FirecrackerJail>, String> {
    firecracker_jailer_cmd_with(opts, n, cfg, &[])
}

/// [`firecracker_jailer_cmd`] with `flags` added to the jailer's own (before `--`).
pub fn firecracker_jailer_cmd_with(
    opts: &Opts,
    n: usize,
    cfg: &Path,
    flags: &[String],
) -> Result<Option<FirecrackerJail>, String> {
    let (Some(fc), Some(jailer)) = (&opts.firecracker, &opts.firecracker_jailer) else {
        return Ok(None);
    };
    let id = format!("{}fc{n}", opts.prefix);
    let name = fc.file_name().ok_or("--firecracker names no file")?;
    let dir = opts.base.join(name).join(&id);
    let root = dir.join("root");
    let err = |what: &Path, e: std::io::Error| format!("{}: {e}", what.display());
    fs::create_dir_all(&root).map_err(|e| err(&root, e))?;
    let kernel = root.join("tiny.elf");
    if fs::hard_link(&opts.tiny, &kernel).is_err() {
        fs::copy(&opts.tiny, &kernel).map_err(|e| err(&kernel, e))?;
    }
    let vm = root.join("vm.json");
    fs::write(&vm, firecracker_json(cfg)).map_err(|e| err(&vm, e))?;
    let uid = jail_uid(n);
    let mut c = Command::new(jailer);
    c.arg("--id")
        .arg(&id)
        .arg("--exec-file")
        .arg(fc)
        .args(["--uid", &uid, "--gid", &uid])
        .arg("--chroot-base-dir")
        .arg(&opts.base)
        .args(flags)
        .args([
            "--",
            "--config-file",
            "/vm.json",
            "--no-api",
            "--level",
            "Off",
        ]);
    Ok(Some(FirecrackerJail { cmd: c, id, dir }))
}

/// Kiln's VMM, unjailed, booting from a config file without its API.
pub fn vmm_config_cmd(opts: &Opts, cfg: &Path) -> Command {
    let mut c = Command::new(&opts.vmm);
    c.arg("--config-file").arg(cfg).arg("--no-api");
    c
}

/// QEMU's `microvm` machine booting the tiny guest (PVH entry) with `scenario`, the serial
/// port on stdout and isa-debug-exit at 0xf4; `None` without QEMU.
///
/// The machine options repeat `kiln_tests::tiny::qemu_microvm` (tests/src/tiny.rs). Not
/// shared on purpose: the bench must not link the test kit (its build script builds the test
/// guest, and its helpers fail loudly by design), and a crate for twelve QEMU arguments would
/// cost more than it saves. Change both together.
pub fn qemu_cmd(opts: &Opts, scenario: &str, vcpus: u32, extra: &[&str]) -> Option<Command> {
    let qemu = opts.qemu.as_ref()?;
    let mut c = Command::new(qemu);
    c.args(["-M", "microvm,accel=kvm,acpi=off", "-m"])
        .arg(opts.mem_mib.to_string())
        .args(["-smp", &vcpus.to_string()])
        .arg("-kernel")
        .arg(&opts.tiny)
        .args(["-append", &format!("kiln.test={scenario}")])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-serial",
            "stdio",
            "-no-reboot",
            "-device",
            "isa-debug-exit,iobase=0xf4",
        ])
        .args(extra);
    Some(c)
}

/// Which jail layers are on.
#[derive(Clone, Copy)]
pub struct Layers {
    pub netns: bool,
    pub pidns: bool,
}

pub const FULL: Layers = Layers {
    netns: true,
    pidns: true,
};

/// The `n`th concurrent jail's uid and gid.
fn jail_uid(n: usize) -> String {
    (UID_BASE + u32::try_from(n % 10_000).unwrap_or(0)).to_string()
}

pub fn jail_id(opts: &Opts, n: usize) -> String {
    format!("{}{n}", opts.prefix)
}

/// The jailer with the full default profile (`--cleanup-on-exit` always, so the jail is
/// removed when the VMM ends) booting the tiny guest in config-file mode.
pub fn jailer_cmd(opts: &Opts, n: usize, cfg: &Path, layers: Layers) -> Command {
    jailer_cmd_at(opts, &opts.base, n, cfg, layers)
}

/// [`jailer_cmd`] with the jails' chroot base `base` instead of the run's.
pub fn jailer_cmd_at(opts: &Opts, base: &Path, n: usize, cfg: &Path, layers: Layers) -> Command {
    let uid = jail_uid(n);
    let mut c = Command::new(&opts.jailer);
    c.arg("--id")
        .arg(jail_id(opts, n))
        .arg("--exec-file")
        .arg(&opts.vmm)
        .args(["--uid", &uid, "--gid", &uid])
        .arg("--chroot-base-dir")
        .arg(base)
        .args(["--parent-cgroup", PARENT_CGROUP, "--parent-cgroup-relative"])
        .arg("--profile")
        .arg(&opts.profile)
        .args(["--cleanup-on-exit", "--timing"]);
    if layers.pidns {
        c.arg("--new-pid-ns");
    }
    // Without the network layer the jail stays in the host's namespace (the jailer's
    // default is an empty namespace of the jail's own).
    c.arg(if layers.netns {
        "--new-netns"
    } else {
        "--share-host-netns"
    });
    c.arg("--bind-ro")
        .arg(format!("{}:/tiny.elf", opts.tiny.display()))
        .arg("--bind-ro")
        .arg(format!("{}:/vm.json", cfg.display()))
        .args(["--", "--config-file", "/vm.json", "--no-api"]);
    c
}
