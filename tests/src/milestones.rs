//! Milestones of a Linux guest's boot, as its serial console shows them: a slow-tier test
//! follows the console line by line, notes when each milestone first appears, stops once
//! all have, and reports the time to each (or what it waited for in vain).

use std::time::Duration;

/// A line of the serial console that shows the guest got somewhere.
#[derive(Debug, Clone)]
pub struct Milestone {
    pub what: &'static str,
    /// Text a console line must contain.
    pub needle: String,
    /// When it was first seen, from the start of the boot.
    pub seen: Option<Duration>,
}

impl Milestone {
    pub fn new(what: &'static str, needle: impl Into<String>) -> Milestone {
        Milestone {
            what,
            needle: needle.into(),
            seen: None,
        }
    }
}

/// Marks the milestones not seen yet whose needle `line` contains as seen `at`, printing
/// each (`[  12.34s] <context>what: line`).
pub fn note(milestones: &mut [Milestone], line: &str, at: Duration, context: &str) {
    for m in milestones.iter_mut().filter(|m| m.seen.is_none()) {
        if line.contains(&m.needle) {
            m.seen = Some(at);
            println!("[{:7.2}s] {context}{}: {line}", at.as_secs_f64(), m.what);
        }
    }
}

/// Whether every milestone has been seen.
pub fn all_seen(milestones: &[Milestone]) -> bool {
    milestones.iter().all(|m| m.seen.is_some())
}

/// One line per milestone: the time it was seen at, or the line it waited for in vain.
pub fn report(milestones: &[Milestone]) -> String {
    milestones
        .iter()
        .map(|m| match m.seen {
            Some(t) => format!("  {:7.2}s  {}", t.as_secs_f64(), m.what),
            None => format!("  missing   {} (no line containing {:?})", m.what, m.needle),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_milestone_is_seen_once_at_its_first_line() {
        let mut m = vec![
            Milestone::new("banner", "Linux version"),
            Milestone::new("init", "Run /init"),
        ];
        note(&mut m, "Linux version 6.1", Duration::from_secs(1), "");
        note(&mut m, "Linux version again", Duration::from_secs(2), "");
        assert_eq!(m[0].seen, Some(Duration::from_secs(1)));
        assert!(!all_seen(&m));
        assert!(report(&m).contains("missing   init (no line containing \"Run /init\")"));
        note(
            &mut m,
            "Run /init as init process",
            Duration::from_secs(3),
            "",
        );
        assert!(all_seen(&m));
    }
}
