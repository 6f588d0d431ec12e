//! linux-echo: reads the event (JSON) on stdin and writes `{"echo": <event>}` on stdout.
//! An empty or non-UTF-8 event is an error: a message on stderr and exit code 1.

use std::io::{Read, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut event = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut event) {
        eprintln!("linux-echo: cannot read the event: {e}");
        return ExitCode::FAILURE;
    }
    let text = match std::str::from_utf8(&event) {
        Ok(t) if !t.trim().is_empty() => t.trim(),
        _ => {
            eprintln!("linux-echo: the event is empty or not UTF-8 text");
            return ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout().lock();
    match write!(out, "{{\"echo\":{text}}}").and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("linux-echo: cannot write the response: {e}");
            ExitCode::FAILURE
        }
    }
}
