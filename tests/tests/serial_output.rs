//! Fast tier: the serial console's destination and bucket (`PUT /serial`, the config file's
//! `serial` section), with the tiny test guest.
//!
//! `serial_out_path` sends the console to a file instead of stdout (and replaces the
//! `--serial-out` flag's destination); a `rate_limiter` bucket drops what the guest writes
//! beyond it and counts it (`uart.rate_limiter_dropped_bytes`), without slowing the guest.
//!
//! Needs /dev/kvm and the `vmm` binary.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kiln_tests::metrics::Metrics;
use kiln_tests::process::Followed;
use kiln_tests::tiny::{self, TinyOutput};
use kiln_tests::{api, require_bin, require_kvm, run_with_timeout, ScratchDir};

const TIMEOUT: Duration = Duration::from_secs(30);

fn config(dir: &ScratchDir, scenario: &str, serial: &str) -> PathBuf {
    dir.write(
        "vm.json",
        format!(
            "{{\"boot-source\": {{\"kernel_image_path\": {:?}, \"boot_args\": \"kiln.test={scenario}\"}},\n \"machine-config\": {{\"vcpu_count\": 1, \"mem_size_mib\": 32}},\n \"serial\": {serial}}}\n",
            tiny::tiny_guest().to_str().expect("utf-8 path")
        ),
    )
}

fn vmm(cfg: &Path, extra: &[&str]) -> Command {
    require_kvm();
    let mut cmd = Command::new(require_bin("vmm"));
    cmd.arg("--config-file")
        .arg(cfg)
        .arg("--no-api")
        .args(extra);
    cmd
}

#[test]
fn serial_out_path_takes_the_console_off_stdout() {
    let dir = ScratchDir::new("kiln-serial");
    let console = dir.join("console.txt");
    let flag_file = dir.join("flag.txt");
    let cfg = config(
        &dir,
        "print",
        &format!("{{\"serial_out_path\": {:?}}}", console.to_str().unwrap()),
    );
    // The configuration's path wins over --serial-out.
    let f = run_with_timeout(
        &mut vmm(&cfg, &["--serial-out", flag_file.to_str().unwrap()]),
        TIMEOUT,
    );
    assert_eq!(f.code(), 0, "{f}");
    assert!(!f.stdout.contains(tiny::PREFIX), "console on stdout\n{f}");
    assert!(!flag_file.exists(), "--serial-out was used instead");
    let text = std::fs::read_to_string(&console).expect("console file");
    let out = TinyOutput::parse(&text);
    assert!(out.done && out.errors().is_empty(), "{text}");
}

#[test]
fn output_beyond_the_bucket_is_dropped_and_counted() {
    let dir = ScratchDir::new("kiln-serial");
    let console = dir.join("console.txt");
    let metrics = dir.join("metrics.json");
    // 100 bytes, then one byte every 36 s; the cpuid scenario prints a few hundred.
    let cfg = config(
        &dir,
        "cpuid",
        &format!(
            "{{\"serial_out_path\": {:?}, \"rate_limiter\": {{\"size\": 100, \"refill_time\": 3600000}}}}",
            console.to_str().unwrap()
        ),
    );
    let f = run_with_timeout(
        &mut vmm(&cfg, &["--metrics-path", metrics.to_str().unwrap()]),
        TIMEOUT,
    );
    // The guest ran to its end (its reset), unslowed; only its output was cut.
    assert_eq!(f.code(), 0, "{f}");
    let text = std::fs::read(&console).expect("console file");
    assert_eq!(text.len(), 100, "{:?}", String::from_utf8_lossy(&text));
    assert!(
        text.starts_with(tiny::START_PVH.as_bytes())
            || text.starts_with(tiny::START_LINUX64.as_bytes())
    );
    let m = Metrics::read(&metrics);
    let written = m.get("uart.write_count");
    assert_eq!(m.get("uart.rate_limiter_dropped_bytes"), written - 100);
    assert!(
        written > 200,
        "the print scenario writes a few lines: {written}"
    );
}

#[test]
fn put_serial_through_the_api() {
    require_kvm();
    let dir = ScratchDir::short("kiln-serial-api");
    let sock = dir.join("api.sock");
    let vm = Followed::spawn(
        Command::new(require_bin("vmm"))
            .arg("--api-sock")
            .arg(&sock),
    );
    let deadline = Instant::now() + TIMEOUT;
    while !sock.exists() {
        assert!(Instant::now() < deadline, "no API socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    let dir_as_file = format!(
        "{{\"serial_out_path\": {:?}}}",
        dir.path().to_str().unwrap()
    );
    let bad = api::request(&sock, "PUT", "/serial", &dir_as_file);
    assert_eq!(bad.0, 400, "{bad:?}");
    assert!(
        bad.1.contains("serial.serial_out_path") && bad.1.contains("not a regular file or a FIFO"),
        "{bad:?}"
    );
    let console = dir.join("console.txt");
    let body = format!(
        "{{\"serial_out_path\": {:?}, \"rate_limiter\": null}}",
        console.to_str().unwrap()
    );
    assert_eq!(api::request(&sock, "PUT", "/serial", &body).0, 204);
    let boot = format!(
        "{{\"kernel_image_path\": {:?}, \"boot_args\": \"kiln.test=print\"}}",
        tiny::tiny_guest().to_str().unwrap()
    );
    assert_eq!(api::request(&sock, "PUT", "/boot-source", &boot).0, 204);
    let (_, cfg) = api::request(&sock, "GET", "/vm/config", "");
    assert!(cfg.contains("console.txt"), "{cfg}");
    let start = r#"{"action_type": "InstanceStart"}"#;
    assert_eq!(api::request(&sock, "PUT", "/actions", start).0, 204);
    let f = vm.finish(TIMEOUT);
    assert!(!f.stdout.contains(tiny::PREFIX), "{f}");
    let text = std::fs::read_to_string(&console).expect("console file");
    assert!(TinyOutput::parse(&text).done, "{text}");
}
