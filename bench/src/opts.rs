//! The command line (tokenized by the shared `kiln_argv`; this module keeps the typed
//! conversions) and what the run needs from it. scripts/bench.sh and docs/benchmarks.md use
//! these flags.

use kiln_argv::{ArgvError, Flag, Table};
use std::ffi::OsString;
use std::path::PathBuf;

pub const USAGE: &str = "\
kiln-bench --vmm PATH --jailer PATH --tiny PATH [OPTIONS]

Measures Kiln (vmm, jailer, kiln worker) and QEMU's microvm on the tiny test guest and prints
a table of min/median/max over repeated runs. Needs root and /dev/kvm.

  --vmm PATH          Kiln's VMM (release build)
  --jailer PATH       Kiln's jailer (release build)
  --tiny PATH         the tiny test guest ELF (tiny-guest-path prints it)
  --qemu PATH         qemu-system-x86_64 (default: found on PATH; QEMU columns empty without)
  --kiln PATH         the kiln worker, for the invocation rows (default: none, rows skipped)
  --firecracker PATH  a Firecracker binary (static): its figures go in the Firecracker columns
                      of the rows that have a Firecracker peer (default: none, columns empty);
                      build it as Firecracker ships it, debug information stripped (objcopy
                      --strip-debug): a note above the table names a peer that is not
  --firecracker-jailer PATH
                      Firecracker's jailer: with --firecracker, the jailed rows (3, 5) get a
                      Firecracker peer, its default jail, and rows 3 also one with the
                      layers of Kiln's profile (cgroups, PID and network namespace) (default:
                      none)
  --profile PATH      tenant profile for the jails (default: policies/tenant/default.json)
  --runs N            runs per measurement (default 20)
  --quick             CI-sized: 5 runs, creation rate for N = 10 only, 50 invocations
  --only LIST         comma-separated subset of:
                      api,serial,jail,mem,rate,teardown,invoke,snapshot,blank,exits
  --mem-mib N         guest memory (default 128)
";

const FLAGS: &[Flag] = &[
    Flag::single("vmm"),
    Flag::single("jailer"),
    Flag::single("tiny"),
    Flag::single("qemu"),
    Flag::single("kiln"),
    Flag::single("firecracker"),
    Flag::single("firecracker-jailer"),
    Flag::single("profile"),
    Flag::single("runs"),
    Flag::switch("quick"),
    Flag::single("only"),
    Flag::single("mem-mib"),
    Flag::switch("help"),
];

pub struct Opts {
    pub vmm: PathBuf,
    pub jailer: PathBuf,
    pub tiny: PathBuf,
    pub qemu: Option<PathBuf>,
    pub kiln: Option<PathBuf>,
    pub firecracker: Option<PathBuf>,
    /// Firecracker's jailer (used only with `firecracker`).
    pub firecracker_jailer: Option<PathBuf>,
    pub profile: PathBuf,
    pub runs: usize,
    pub quick: bool,
    pub only: Option<Vec<String>>,
    pub mem_mib: u32,
    /// Scratch files (VM configs, sockets, the worker's state).
    pub work: PathBuf,
    /// The jails' chroot base.
    pub base: PathBuf,
    /// Every jail id starts with it (leak checks look for it).
    pub prefix: String,
}

impl Opts {
    pub fn wants(&self, what: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|l| l.iter().any(|x| x == what))
    }
}

/// What the command line asks for.
pub enum Parsed {
    Help,
    Run(Box<Opts>),
}

fn runs(v: &str) -> Result<usize, String> {
    v.parse::<usize>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| "not a positive number".to_string())
}

fn mem_mib(v: &str) -> Result<u32, String> {
    v.parse::<u32>()
        .ok()
        .filter(|n| *n >= 16)
        .ok_or_else(|| "need a number >= 16".to_string())
}

/// Parses the arguments after the program name (`-h` is `--help`).
pub fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Parsed, ArgvError> {
    let args = args.into_iter().map(|a| {
        if a == "-h" {
            OsString::from("--help")
        } else {
            a
        }
    });
    let a = kiln_argv::parse(&Table::flags(FLAGS), args)?;
    if a.switch("help") {
        return Ok(Parsed::Help);
    }
    let quick = a.switch("quick");
    let qemu = a.single("qemu").map(PathBuf::from).or_else(|| {
        std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .map(|d| d.join("qemu-system-x86_64"))
            .find(|p| p.is_file())
    });
    let pid = std::process::id();
    Ok(Parsed::Run(Box::new(Opts {
        vmm: PathBuf::from(a.required("vmm")?),
        jailer: PathBuf::from(a.required("jailer")?),
        tiny: PathBuf::from(a.required("tiny")?),
        qemu,
        kiln: a.single("kiln").map(PathBuf::from),
        firecracker: a.single("firecracker").map(PathBuf::from),
        firecracker_jailer: a.single("firecracker-jailer").map(PathBuf::from),
        profile: PathBuf::from(
            a.single("profile")
                .unwrap_or("policies/tenant/default.json"),
        ),
        runs: a
            .converted("runs", runs)?
            .unwrap_or(if quick { 5 } else { 20 }),
        quick,
        only: a
            .single("only")
            .map(|l| l.split(',').map(str::to_string).collect()),
        mem_mib: a.converted("mem-mib", mem_mib)?.unwrap_or(128),
        work: PathBuf::from(format!("/tmp/kiln-bench-{pid}")),
        base: PathBuf::from(format!("/srv/kiln-bench-{pid}")),
        prefix: format!("kb{pid}-"),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Parsed, ArgvError> {
        parse_args(args.iter().map(OsString::from))
    }

    const REQUIRED: [&str; 6] = ["--vmm", "v", "--jailer", "j", "--tiny", "t"];

    #[test]
    fn flags_as_scripts_bench_sh_passes_them() {
        let mut argv = REQUIRED.to_vec();
        argv.extend([
            "--kiln",
            "k",
            "--firecracker",
            "fc",
            "--firecracker-jailer",
            "fcj",
            "--qemu",
            "q",
            "--profile",
            "p",
            "--quick",
            "--only",
            "api,serial",
            "--mem-mib=64",
        ]);
        let Ok(Parsed::Run(o)) = p(&argv) else {
            panic!("{argv:?}");
        };
        assert_eq!(
            (o.vmm.to_str(), o.jailer.to_str(), o.tiny.to_str()),
            (Some("v"), Some("j"), Some("t"))
        );
        assert_eq!(o.kiln, Some(PathBuf::from("k")));
        assert_eq!(o.firecracker, Some(PathBuf::from("fc")));
        assert_eq!(o.firecracker_jailer, Some(PathBuf::from("fcj")));
        assert_eq!(o.qemu, Some(PathBuf::from("q")));
        assert_eq!(o.profile, PathBuf::from("p"));
        assert!(o.quick);
        assert_eq!(o.runs, 5, "--quick means 5 runs");
        assert!(o.wants("api") && o.wants("serial") && !o.wants("mem"));
        assert_eq!(o.mem_mib, 64);
        let Ok(Parsed::Run(o)) = p(&REQUIRED) else {
            panic!("defaults");
        };
        assert_eq!((o.runs, o.mem_mib, o.quick), (20, 128, false));
        assert!(o.wants("invoke") && o.wants("snapshot"));
        assert_eq!(o.firecracker, None);
        assert_eq!(o.firecracker_jailer, None);
    }

    #[test]
    fn errors_name_the_flag() {
        assert!(matches!(p(&["-h"]), Ok(Parsed::Help)));
        assert!(matches!(p(&["--help"]), Ok(Parsed::Help)));
        assert_eq!(
            p(&["--vmm", "v"]).err(),
            Some(ArgvError::MissingFlag("jailer"))
        );
        assert_eq!(
            p(&["--bogus"]).err(),
            Some(ArgvError::UnknownFlag("--bogus".into()))
        );
        for (flag, value) in [("runs", "0"), ("runs", "x"), ("mem-mib", "8")] {
            let mut argv = REQUIRED.to_vec();
            let f = format!("--{flag}");
            argv.extend([f.as_str(), value]);
            match p(&argv) {
                Err(ArgvError::BadValue { flag: got, .. }) => assert_eq!(got, flag),
                _ => panic!("{argv:?}"),
            }
        }
    }
}
