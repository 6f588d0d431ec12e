//! The jailer's command line (`jailer/src/args/`, `args::parse`, tokenized by `kiln-argv`):
//! every flag's syntax and validation, the cross-flag rules, and the file-system checks of
//! paths (read-only: the parser only looks things up).
//!
//! Input: the arguments after the program name, separated by NUL bytes (any bytes, as
//! `argv` may hold; non-UTF-8 arguments are errors).
//!
//! Besides "Ok or a typed error, never a panic": an accepted jail configuration has a valid
//! id, non-root uid and gid, and binds that do not overlap.
#![no_main]

use jailer::args::{self, Command};
use libfuzzer_sys::fuzz_target;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

fuzz_target!(|data: &[u8]| {
    kiln_fuzz::setup();
    let argv: Vec<OsString> = if data.is_empty() {
        Vec::new()
    } else {
        data.split(|&b| b == 0)
            .map(|a| OsString::from_vec(a.to_vec()))
            .collect()
    };
    let parsed = args::parse(argv);
    kiln_fuzz::debug(|| format!("{parsed:?}"));
    if let Ok(Command::Jail(c)) = parsed {
        assert!(args::validate_id(&c.id).is_ok(), "accepted id {:?}", c.id);
        assert!(c.uid != 0 && c.gid != 0, "a root uid or gid was accepted");
        for (i, a) in c.binds.iter().enumerate() {
            for b in &c.binds[i + 1..] {
                assert!(
                    !a.jail.starts_with(&b.jail) && !b.jail.starts_with(&a.jail),
                    "overlapping binds {:?} and {:?}",
                    a.jail,
                    b.jail
                );
            }
        }
    }
});
