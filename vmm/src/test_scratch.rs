//! Scratch directories for the crate's unit tests: one per test process and name, made on
//! first use and removed when the process exits (tests of one process share it, so no single
//! test can remove it).

use std::path::PathBuf;
use std::sync::{Mutex, Once};

static MADE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

extern "C" fn remove_all() {
    if let Ok(dirs) = MADE.lock() {
        for d in dirs.iter() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// `<temp>/<name>-<pid>`, made if needed; removed at exit.
pub(crate) fn dir(name: &str) -> PathBuf {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // SAFETY: `remove_all` is a plain `extern "C" fn` with no arguments that only touches
        // a static; libc runs it once, at exit, on the exiting thread.
        unsafe { libc::atexit(remove_all) };
    });
    let d = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("make a scratch directory");
    let mut made = MADE.lock().unwrap_or_else(|e| e.into_inner());
    if !made.contains(&d) {
        made.push(d.clone());
    }
    d
}
