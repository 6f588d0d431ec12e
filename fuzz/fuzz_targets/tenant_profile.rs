//! The tenant profile loader (`jailer/src/profile.rs`, `Profile::load`) and its validation
//! in the jailer's argument parser (`args::parse` with `--profile FILE`: cgroup limits,
//! rlimits, egress allow-list, extra Landlock paths and ports, and how flags override them).
//!
//! Input: byte 0 picks extra flags (bit 0 `--new-netns`, bit 1 `--bind-rw /tmp:/data`,
//! bit 2 `--egress-allow tcp,10.0.0.0/8,443` which replaces the profile's list, bit 3
//! `--resource-limit no-file=64`); bytes 1.. are the profile file.
//!
//! Besides "Ok or a typed error, never a panic": an accepted profile gives egress entries
//! with no host bits below their prefix and no port 0, Landlock paths that are absolute, and
//! no zero cgroup limit.
#![no_main]

use jailer::args::{self, Command};
use kiln_fuzz::{Input, MemFile};
use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;
use std::ffi::OsString;
use std::net::IpAddr;

thread_local! {
    static PROFILE: RefCell<MemFile> = RefCell::new(MemFile::new("kiln-fuzz-profile"));
}

fn host_bits_clear(addr: IpAddr, prefix: u8) -> bool {
    match addr {
        IpAddr::V4(a) => prefix >= 32 || u32::from(a) << prefix == 0,
        IpAddr::V6(a) => prefix >= 128 || u128::from(a) << prefix == 0,
    }
}

fuzz_target!(|data: &[u8]| {
    kiln_fuzz::setup();
    let mut input = Input::new(data);
    let flags = input.u8();
    let text = input.rest();
    PROFILE.with(|p| {
        let mut p = p.borrow_mut();
        let path = p.set(text).to_string();
        let mut argv: Vec<&str> = vec![
            "--id",
            "fuzz-1",
            "--exec-file",
            "/usr/bin/true",
            "--uid",
            "1000",
            "--gid",
            "1000",
            "--chroot-base-dir",
            "/tmp",
            "--profile",
            &path,
        ];
        if flags & 1 != 0 {
            argv.push("--new-netns");
        }
        if flags & 2 != 0 {
            argv.extend(["--bind-rw", "/tmp:/data"]);
        }
        if flags & 4 != 0 {
            argv.extend(["--egress-allow", "tcp,10.0.0.0/8,443"]);
        }
        if flags & 8 != 0 {
            argv.extend(["--resource-limit", "no-file=64"]);
        }
        let parsed = args::parse(argv.iter().map(OsString::from));
        kiln_fuzz::debug(|| match &parsed {
            Ok(Command::Jail(c)) => {
                format!("accepted: {:?} {:?} {:?}", c.network, c.cgroup, c.landlock)
            }
            other => format!("{other:?}"),
        });
        let Ok(Command::Jail(c)) = parsed else {
            return;
        };
        for e in &c.network.egress {
            assert!(host_bits_clear(e.addr, e.prefix), "{e:?} has host bits set");
            assert!(!e.ports.contains(&0), "{e:?} allows port 0");
        }
        for (path, _) in &c.landlock.paths {
            assert!(path.is_absolute(), "landlock path {path:?} is not absolute");
        }
        assert!(!c.landlock.tcp_connect.contains(&0) && !c.landlock.tcp_bind.contains(&0));
        let l = &c.cgroup.limits;
        for v in [l.cpu_quota_us, l.cpu_period_us, l.memory_bytes, l.pids_max] {
            assert_ne!(v, Some(0), "a zero cgroup limit was accepted");
        }
    });
});
