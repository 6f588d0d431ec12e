//! A function's manifest (`kiln.json`, guest/builder/src/manifest.rs), the function
//! author's input to the worker and the builder: `Manifest::parse` (serde with
//! `deny_unknown_fields`, then every field's validation: name, memory, vCPUs, timeouts,
//! concurrency, event size, kind, `exec`, Lambda runtime, handler, code and root file system
//! paths, environment), and, for a Lambda function, the configuration the builder writes for
//! kiln-init (`lambda::config`) read back by the agent (`kiln_init::lambda::config::
//! LambdaConfig::parse`).
//!
//! Input: the manifest's text (lossy UTF-8).
//!
//! Checks: an accepted manifest serialises and parses back to itself, and is accepted again;
//! its limits are the documented ones (name 1-40 of `[A-Za-z0-9_-]`, memory 8-3072 MiB and
//! room for twice the largest event, one vCPU, timeouts up to 15 minutes, concurrency up to
//! 1024, events up to 6 MiB, `exec`/`code`/`rootfs` relative without `..`); a Lambda
//! function's configuration reads back in the agent as the manifest says.
#![no_main]

use kiln_guest_builder::{lambda, Kind, Manifest};
use kiln_init::lambda::config::LambdaConfig;
use libfuzzer_sys::fuzz_target;
use std::path::{Component, Path};

/// Plain names only: no root, no `..`, no `.`.
fn plain_relative(p: &str) -> bool {
    !p.is_empty()
        && Path::new(p)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

fuzz_target!(|data: &[u8]| {
    kiln_fuzz::setup();
    let text = String::from_utf8_lossy(data);
    let path = Path::new("/functions/f/kiln.json");
    let m = match Manifest::parse(&text, path) {
        Ok(m) => m,
        Err(e) => {
            let e = e.to_string();
            assert!(e.starts_with("manifest /functions/f/kiln.json: "), "{e}");
            kiln_fuzz::debug(|| e);
            return;
        }
    };
    kiln_fuzz::debug(|| format!("{m:?}"));

    // The documented limits.
    assert!((1..=40).contains(&m.name.len()));
    assert!(m
        .name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
    assert!((8..=3072).contains(&m.memory_mib));
    assert!(u64::from(m.memory_mib) >= 6 + (2 * u64::from(m.max_event_bytes)).div_ceil(1 << 20));
    assert_eq!(m.vcpus, 1);
    assert!((1..=900_000).contains(&m.timeout_ms));
    assert!((1..=1024).contains(&m.concurrency));
    assert!((1..=6 << 20).contains(&m.max_event_bytes));
    for p in [&m.exec, &m.rootfs].into_iter().flatten() {
        assert!(plain_relative(p), "{p:?}");
    }
    if let Some(code) = &m.code {
        assert!(code == "." || plain_relative(code), "{code:?}");
    }
    if m.kind == Kind::Image {
        assert!(m.exec.is_none() && m.runtime.is_none() && m.hello_timeout_ms.is_none());
    }

    // It round-trips.
    let json = serde_json::to_string(&m).expect("a manifest serialises");
    let again = Manifest::parse(&json, path).expect("a serialised manifest is accepted");
    assert_eq!(again, m);

    // A Lambda function's configuration, as the agent reads it.
    if m.is_lambda() {
        let bytes = lambda::config(&m);
        let c = LambdaConfig::parse(&bytes).expect("the agent reads the builder's configuration");
        assert_eq!(c.name, m.name);
        assert_eq!(Some(c.runtime.as_str()), m.runtime.as_deref());
        assert_eq!(c.handler, m.handler.clone().unwrap_or_default());
        assert_eq!((c.memory_mib, c.timeout_ms), (m.memory_mib, m.timeout_ms));
        let env: Vec<(String, String)> = m.environment.clone().into_iter().collect();
        assert_eq!(c.environment, env);
    }
});
