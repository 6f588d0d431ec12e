//! `escape-probe`'s side of a jailed run: the attempts it knows, the outcome of each as it
//! reports them (`begin`, `result`, `done` lines, or the signal that ended it), and how an
//! outcome compares with the one a configuration expects.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::Duration;

/// How long one jailed probe run may take.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// One attempt as `escape-probe --list` describes it.
#[derive(Debug, Clone)]
pub struct AttemptInfo {
    pub name: String,
    pub family: String,
    /// Run in a jail of its own (it changes the process, or may end it).
    pub alone: bool,
    pub what: String,
}

/// Every attempt the probe knows, in its order.
pub fn attempts(probe: &Path) -> Vec<AttemptInfo> {
    let out = Command::new(probe)
        .arg("--list")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} --list: {e}", probe.display()));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(4, '\t');
            Some(AttemptInfo {
                name: f.next()?.to_owned(),
                family: f.next()?.to_owned(),
                alone: f.next()? == "alone",
                what: f.next()?.to_owned(),
            })
        })
        .collect()
}

/// What an attempt achieved, seen from outside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Got {
    /// `blocked HOW`.
    Blocked(String),
    /// `escaped WHAT`.
    Escaped(String),
    /// `error WHAT`: the attempt could not be made.
    Error(String),
    /// The process died of this signal during the attempt.
    Signal(i32),
    /// Never reported (the run ended before it).
    Missing(String),
}

impl Got {
    /// The short form compared with an expectation: the errno name (first word of HOW),
    /// `ESCAPED`, `SIGSYS`/`SIGKILL`/..., `ERROR`, `MISSING`.
    pub fn key(&self) -> String {
        match self {
            Got::Blocked(how) => how
                .split([' ', ','])
                .next()
                .unwrap_or_default()
                .trim_end_matches(':')
                .to_owned(),
            Got::Escaped(_) => "ESCAPED".into(),
            Got::Error(_) => "ERROR".into(),
            Got::Signal(s) => signal_name(*s),
            Got::Missing(_) => "MISSING".into(),
        }
    }

    /// Everything that was reported.
    pub fn detail(&self) -> String {
        match self {
            Got::Blocked(how) => format!("blocked {how}"),
            Got::Escaped(what) => format!("ESCAPED {what}"),
            Got::Error(what) => format!("error {what}"),
            Got::Signal(s) => format!("killed by {}", signal_name(*s)),
            Got::Missing(why) => format!("not reported ({why})"),
        }
    }

    pub fn is_escape(&self) -> bool {
        matches!(self, Got::Escaped(_))
    }
}

pub fn signal_name(s: i32) -> String {
    match s {
        libc::SIGSYS => "SIGSYS".into(),
        libc::SIGKILL => "SIGKILL".into(),
        libc::SIGSEGV => "SIGSEGV".into(),
        libc::SIGABRT => "SIGABRT".into(),
        libc::SIGXFSZ => "SIGXFSZ".into(),
        libc::SIGBUS => "SIGBUS".into(),
        other => format!("SIG{other}"),
    }
}

/// An expected outcome: one key (`EACCES`, `SIGSYS`, `ESCAPED`...) or alternatives
/// separated by `|` (where the host kernel's configuration decides, e.g. `EPERM|ENOSYS`
/// for a syscall compiled out of some kernels).
pub fn matches(expected: &str, got: &Got) -> bool {
    let key = got.key();
    expected.split('|').any(|e| e == key)
}

/// The results of one probe run: attempt → outcome, the attempt that was running when the
/// process ended (if it did not finish), and how it ended.
#[derive(Debug, Default)]
pub struct ProbeRun {
    pub results: BTreeMap<String, Got>,
    pub in_progress: Option<String>,
    pub done: bool,
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl ProbeRun {
    /// Reads the probe's output lines (`begin`, `result`, `done`).
    pub fn parse(stdout: &str, stderr: &str, status: Option<ExitStatus>) -> ProbeRun {
        let mut run = ProbeRun {
            status,
            stdout: stdout.to_owned(),
            stderr: stderr.to_owned(),
            ..ProbeRun::default()
        };
        for line in stdout.lines() {
            if line == "done" {
                run.done = true;
            } else if let Some(name) = line.strip_prefix("begin ") {
                run.in_progress = Some(name.to_owned());
            } else if let Some(rest) = line.strip_prefix("result ") {
                let mut f = rest.splitn(3, ' ');
                let (Some(name), Some(kind)) = (f.next(), f.next()) else {
                    continue;
                };
                let text = f.next().unwrap_or_default().to_owned();
                let got = match kind {
                    "blocked" => Got::Blocked(text),
                    "escaped" => Got::Escaped(text),
                    _ => Got::Error(text),
                };
                run.results.insert(name.to_owned(), got);
                if run.in_progress.as_deref() == Some(name) {
                    run.in_progress = None;
                }
            }
        }
        // A process that died inside an attempt: that attempt got the signal.
        if let (Some(name), Some(sig)) = (&run.in_progress, status.and_then(|s| s.signal())) {
            run.results.insert(name.clone(), Got::Signal(sig));
        }
        run
    }

    pub fn describe(&self) -> String {
        format!(
            "status {:?}\n--- probe stdout:\n{}\n--- stderr:\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` (a jailer) to the end, killing it at the deadline; stdin is /dev/null.
pub fn run_jailer(cmd: &mut Command) -> ProbeRun {
    let f = crate::run_with_timeout(cmd, RUN_TIMEOUT);
    ProbeRun::parse(&f.stdout, &f.stderr, f.status)
}
