//! `kiln-seccompiler INPUT.json OUTPUT`: compiles a JSON seccomp filter set (seccompiler's
//! format, one filter for each of `api`, `vmm` and `vcpu`) to the compiled filter set that
//! `vmm --seccomp-filter OUTPUT` loads (`vmm/src/seccomp/format.rs`), for this machine's
//! architecture. The input is checked as the VMM checks it: a file that the VMM would refuse
//! is refused here with the same message. See policies/seccomp/README.md.

/// `eprintln!` that drops a message stderr cannot take (a pipe nobody reads any more)
/// instead of panicking: `kiln_argv::stderr`.
macro_rules! eprintln {
    ($($arg:tt)*) => {
        kiln_argv::stderr::line(format_args!($($arg)*))
    };
}

use std::path::Path;
use std::process::ExitCode;
use vmm::seccomp::FilterSet;

const USAGE: &str = "usage: kiln-seccompiler INPUT.json OUTPUT";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let [input, output] = args.as_slice() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let set = match FilterSet::from_file(Path::new(input)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kiln-seccompiler: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = std::fs::write(output, set.to_compiled()) {
        eprintln!("kiln-seccompiler: cannot write {output:?}: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
