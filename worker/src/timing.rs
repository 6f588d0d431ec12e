//! Where an invocation's time went, measured on the monotonic clock (`Instant`).
//!
//! A cold invocation has four phases:
//!
//! | phase | from | to |
//! | --- | --- | --- |
//! | jail | spawning the jailer | the VMM starting to build the microVM (jail set-up, exec of the VMM, config read) |
//! | VMM start | the VMM's config read | its vCPU threads running (the VMM's own `--boot-timer` marks) |
//! | guest ready | vCPUs running | the guest's `Hello` on the vsock stream |
//! | handler | `Invoke` sent | `Response` or `Error` received |
//!
//! A start on a blank instance (`kiln serve --blank-pool`) counts from its assignment: jail =
//! the image staged into the ready jail and the configuration sent to its VMM, VMM start =
//! until the VMM answered `InstanceStart`, guest ready = until `Hello`
//! ([`StartTimings::from_assignment`]).
//!
//! A warm invocation only has the handler phase (plus any wait for a free instance). The
//! VMM start phase is the difference of two marks the VMM prints with `--boot-timer`
//! (`boot-timer: <phase>: <ms> ms`, both relative to the jailer's start); the jail phase is
//! what remains between the spawn and the arrival of those marks, so the phases add up to
//! the measured total.

use std::time::{Duration, Instant};

/// The `--boot-timer` mark printed once the VMM has read its command line and config file.
pub const MARK_VMM_RUNNING: &str = "command line and config file read";
/// The `--boot-timer` mark printed once the vCPU threads run guest code.
pub const MARK_VCPUS_STARTED: &str = "vCPU threads started";

/// One `boot-timer: <phase>: <ms> ms` line of the VMM's stderr, and when it arrived.
#[derive(Debug, Clone)]
pub struct BootMark {
    pub phase: String,
    /// Milliseconds since the jailer started, as the VMM measured them.
    pub at_ms: f64,
    pub arrived: Instant,
}

/// Parses `boot-timer: <phase>: <ms> ms`; `None` for any other line.
pub fn parse_boot_mark(line: &str, arrived: Instant) -> Option<BootMark> {
    let rest = line.trim_end().strip_prefix("boot-timer: ")?;
    let (phase, value) = rest.rsplit_once(": ")?;
    let ms: f64 = value.strip_suffix(" ms")?.trim().parse().ok()?;
    (ms.is_finite() && ms >= 0.0).then(|| BootMark {
        phase: phase.to_string(),
        at_ms: ms,
        arrived,
    })
}

/// The phases of a cold start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StartTimings {
    /// `None` (like `vmm_start` and `guest_ready`) when the VMM's marks were not seen: then
    /// only `total` is known.
    pub jail: Option<Duration>,
    pub vmm_start: Option<Duration>,
    pub guest_ready: Option<Duration>,
    /// Spawn of the jailer to the guest's `Hello`.
    pub total: Duration,
}

impl StartTimings {
    /// Splits `spawned → hello` with the VMM's two marks (if both were seen).
    pub fn from_marks(spawned: Instant, hello: Instant, marks: &[BootMark]) -> StartTimings {
        let total = hello.saturating_duration_since(spawned);
        let find = |phase: &str| marks.iter().find(|m| m.phase == phase);
        let (Some(running), Some(vcpus)) = (find(MARK_VMM_RUNNING), find(MARK_VCPUS_STARTED))
        else {
            return StartTimings {
                jail: None,
                vmm_start: None,
                guest_ready: None,
                total,
            };
        };
        let vmm_start = Duration::from_secs_f64(((vcpus.at_ms - running.at_ms) / 1e3).max(0.0));
        // The marks are printed together once the vCPUs run: everything before the VMM's
        // own build time is the jail's.
        let until_marks = vcpus.arrived.saturating_duration_since(spawned).min(total);
        let vmm_start = vmm_start.min(until_marks);
        StartTimings {
            jail: Some(until_marks - vmm_start),
            vmm_start: Some(vmm_start),
            guest_ready: Some(total - until_marks),
            total,
        }
    }

    /// A start on a blank instance, from its assignment to the guest's `Hello`: `jail` is
    /// the image staged into the (ready) jail and the configuration sent to its VMM
    /// (`assigned → configured`), `vmm_start` the VMM's build until it answered
    /// `InstanceStart` (its vCPUs run), `guest_ready` the rest until the `Hello`.
    pub fn from_assignment(
        assigned: Instant,
        configured: Instant,
        answered: Instant,
        hello: Instant,
    ) -> StartTimings {
        let configured = configured.clamp(assigned, hello.max(assigned));
        let answered = answered.clamp(configured, hello.max(configured));
        StartTimings {
            jail: Some(configured - assigned),
            vmm_start: Some(answered - configured),
            guest_ready: Some(hello.saturating_duration_since(answered)),
            total: hello.saturating_duration_since(assigned),
        }
    }
}

/// Everything one invocation measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InvocationTimings {
    /// Waiting for a free instance (concurrency limit).
    pub queued: Duration,
    /// Present for a cold invocation.
    pub start: Option<StartTimings>,
    pub handler: Duration,
    /// From the request to the answer (queue + start + handler).
    pub total: Duration,
}

/// Milliseconds with three decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn opt_ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "n/a".to_string(), ms)
}

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl InvocationTimings {
    /// One human-readable line: `jail 12.345 ms, VMM start ..., handler ..., total ...`.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if !self.queued.is_zero() {
            parts.push(format!("queued {}", ms(self.queued)));
        }
        if let Some(s) = &self.start {
            parts.push(format!("jail {}", opt_ms(s.jail)));
            parts.push(format!("VMM start {}", opt_ms(s.vmm_start)));
            parts.push(format!("guest ready {}", opt_ms(s.guest_ready)));
        }
        parts.push(format!("handler {}", ms(self.handler)));
        parts.push(format!("total {}", ms(self.total)));
        parts.join(", ")
    }

    /// `{"queued_us":..,"jail_us":..,"vmm_start_us":..,"guest_ready_us":..,"handler_us":..,"total_us":..}`
    /// (start phases only for a cold invocation; `null` when unknown).
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("queued_us".into(), us(self.queued).into());
        if let Some(s) = &self.start {
            let opt = |d: Option<Duration>| d.map(us).map_or(serde_json::Value::Null, Into::into);
            m.insert("jail_us".into(), opt(s.jail));
            m.insert("vmm_start_us".into(), opt(s.vmm_start));
            m.insert("guest_ready_us".into(), opt(s.guest_ready));
            m.insert("start_us".into(), us(s.total).into());
        }
        m.insert("handler_us".into(), us(self.handler).into());
        m.insert("total_us".into(), us(self.total).into());
        serde_json::Value::Object(m)
    }

    /// The `X-Kiln-Timings` header: `handler_us=412, total_us=530` (and the start phases).
    pub fn header(&self) -> String {
        match self.to_json() {
            serde_json::Value::Object(m) => m
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", "),
            _ => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_boot_timer_lines_only() {
        let now = Instant::now();
        let m = parse_boot_mark("boot-timer: vCPU threads started: 12.500 ms\n", now).unwrap();
        assert_eq!(m.phase, MARK_VCPUS_STARTED);
        assert!((m.at_ms - 12.5).abs() < 1e-9);
        let m = parse_boot_mark("boot-timer: first guest serial byte: 3.000 ms", now).unwrap();
        assert_eq!(m.phase, "first guest serial byte");
        for bad in [
            "boot-time: instance_start process_start_to_instance_start_us=1",
            "boot-timer: x: -1 ms",
            "boot-timer: x: NaN ms",
            "boot-timer: x: 1",
            "vmm: boot-timer: x: 1 ms",
            "",
        ] {
            assert!(parse_boot_mark(bad, now).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn phases_add_up_to_the_total() {
        let t0 = Instant::now();
        let arrived = t0 + Duration::from_millis(30);
        let hello = t0 + Duration::from_millis(35);
        let marks = [
            BootMark {
                phase: MARK_VMM_RUNNING.into(),
                at_ms: 20.0,
                arrived,
            },
            BootMark {
                phase: MARK_VCPUS_STARTED.into(),
                at_ms: 28.0,
                arrived,
            },
        ];
        let s = StartTimings::from_marks(t0, hello, &marks);
        assert_eq!(s.vmm_start, Some(Duration::from_millis(8)));
        assert_eq!(s.jail, Some(Duration::from_millis(22)));
        assert_eq!(s.guest_ready, Some(Duration::from_millis(5)));
        assert_eq!(s.total, Duration::from_millis(35));
        let none = StartTimings::from_marks(t0, hello, &marks[..1]);
        let blank = StartTimings::from_assignment(
            t0,
            t0 + Duration::from_micros(300),
            t0 + Duration::from_micros(1_200),
            hello,
        );
        assert_eq!(blank.jail, Some(Duration::from_micros(300)));
        assert_eq!(blank.vmm_start, Some(Duration::from_micros(900)));
        assert_eq!(
            blank.guest_ready,
            Some(hello - t0 - Duration::from_micros(1_200))
        );
        assert_eq!(blank.total, hello - t0);
        // Out-of-order instants never make a phase negative or the phases exceed the total.
        let odd = StartTimings::from_assignment(t0, hello + Duration::from_millis(1), t0, hello);
        assert_eq!(odd.jail, Some(hello - t0));
        assert_eq!(
            (odd.vmm_start, odd.guest_ready),
            (Some(Duration::ZERO), Some(Duration::ZERO))
        );
        assert_eq!(none.jail, None);
        assert_eq!(none.total, Duration::from_millis(35));
    }

    #[test]
    fn summary_and_json_name_every_phase() {
        let t = InvocationTimings {
            queued: Duration::ZERO,
            start: Some(StartTimings {
                jail: Some(Duration::from_micros(1500)),
                vmm_start: Some(Duration::from_micros(700)),
                guest_ready: None,
                total: Duration::from_micros(3000),
            }),
            handler: Duration::from_micros(250),
            total: Duration::from_micros(3300),
        };
        let s = t.summary();
        assert_eq!(
            s,
            "jail 1.500 ms, VMM start 0.700 ms, guest ready n/a, handler 0.250 ms, total 3.300 ms"
        );
        let j = t.to_json();
        assert_eq!(j["jail_us"], 1500);
        assert_eq!(j["guest_ready_us"], serde_json::Value::Null);
        assert_eq!(j["handler_us"], 250);
        assert!(t.header().contains("handler_us=250"));
    }
}
