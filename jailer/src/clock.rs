//! Times reported to the VMM (`--start-time-us`, `--start-time-cpu-us`,
//! `--parent-cpu-time-us`, as Firecracker's jailer passes them) and the per-step timings
//! printed with `--timing`.

use nix::time::{clock_gettime, ClockId};

/// Microseconds on a clock (0 if the clock cannot be read, which Linux never does for these).
pub fn now_us(clock: ClockId) -> u64 {
    let Ok(ts) = clock_gettime(clock) else {
        return 0;
    };
    let secs = u64::try_from(ts.tv_sec()).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec()).unwrap_or(0);
    secs.saturating_mul(1_000_000).saturating_add(nanos / 1_000)
}

#[derive(Debug, Clone)]
pub struct Clock {
    /// CLOCK_MONOTONIC when the jailer started.
    pub start_us: u64,
    /// CPU time used by this process's ancestors before they forked it.
    pub parent_cpu_us: u64,
    last_us: u64,
    /// When the last part of the current step ended (or the step began).
    part_us: u64,
    enabled: bool,
}

impl Clock {
    pub fn start() -> Self {
        let start_us = now_us(ClockId::CLOCK_MONOTONIC);
        Clock {
            start_us,
            parent_cpu_us: 0,
            last_us: start_us,
            part_us: start_us,
            enabled: false,
        }
    }

    pub fn enable(&mut self, on: bool) {
        self.enabled = on;
    }

    /// With `--timing`, prints how long the step that just ended took.
    pub fn step(&mut self, name: &str) {
        let now = now_us(ClockId::CLOCK_MONOTONIC);
        if self.enabled {
            eprintln!(
                "jailer timing: {name}: {} us (at {} us, pid {})",
                now.saturating_sub(self.last_us),
                now.saturating_sub(self.start_us),
                std::process::id()
            );
        }
        self.last_us = now;
        self.part_us = now;
    }

    /// With `--timing`, prints how long a part of the step `step` took (since the step's
    /// last part ended, or since the step began): `STEP › PART`. The step's own line, when
    /// it ends, still gives its whole time.
    pub fn part(&mut self, step: &str, part: &str) {
        let now = now_us(ClockId::CLOCK_MONOTONIC);
        if self.enabled {
            eprintln!(
                "jailer timing: {step} › {part}: {} us (at {} us, pid {})",
                now.saturating_sub(self.part_us),
                now.saturating_sub(self.start_us),
                std::process::id()
            );
        }
        self.part_us = now;
    }

    /// A copy for a thread that times steps of its own from now (its lines say how long
    /// since it began; `at` still counts from the jailer's start).
    pub fn branch(&self) -> Clock {
        let now = now_us(ClockId::CLOCK_MONOTONIC);
        Clock {
            last_us: now,
            part_us: now,
            ..self.clone()
        }
    }

    /// To be called just before a fork: the child's CPU clock restarts at zero.
    pub fn before_fork(&mut self) {
        self.parent_cpu_us = self
            .parent_cpu_us
            .saturating_add(now_us(ClockId::CLOCK_PROCESS_CPUTIME_ID));
    }
}
