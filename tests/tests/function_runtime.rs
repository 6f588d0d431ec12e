//! Function images with no guest OS (guest/runtime, examples/functions) under Kiln's VMM,
//! driven over vsock exactly as the worker drives them, without the worker.
//!
//! Each test builds its function with kiln-guest-builder (once per test binary, under
//! CARGO_TARGET_TMPDIR), listens on `<uds_path>_1024` *before* it starts
//! `vmm --config-file ... --no-api` with a vsock device, accepts the guest's connection and
//! speaks the invocation protocol of `kiln-protocol`: Hello, Invoke, Response/Error. Covered:
//! the cold start, warm reuse (a second invocation, the counter function's state), handler
//! errors, events over the limit, a panic reported as a structured error before the VM stops,
//! both boot entries, and a CPU-bound function that runs at native speed (CPL 3).
//!
//! Timings are printed (run with `--nocapture`): VMM start to Hello (cold), Invoke to Response
//! (warm). Needs /dev/kvm, the `vmm` binary and objdump.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use kiln_guest_builder::{build_function, Image};
use kiln_protocol::{decode_error, ErrorCode, Header, Kind, HEADER_LEN};
use kiln_tests::metrics::Metrics;
use kiln_tests::process::spawn;
use kiln_tests::{require_bin, require_kvm, wait_with_timeout, Finished, KillOnDrop, ScratchDir};

/// Generous: a cold start takes milliseconds; a hang is killed at the deadline.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Builds `examples/functions/<name>` once per test binary.
fn image(name: &str) -> Image {
    static BUILT: OnceLock<Mutex<HashMap<String, Image>>> = OnceLock::new();
    let built = BUILT.get_or_init(|| Mutex::new(HashMap::new()));
    // One build at a time: they share cargo's target directory.
    let mut built = built.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(image) = built.get(name) {
        return image.clone();
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/functions")
        .join(name);
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("functions");
    let image =
        build_function(&dir, &out).unwrap_or_else(|e| panic!("building the {name} function: {e}"));
    built.insert(name.to_string(), image.clone());
    image
}

/// One function VM and the worker's end of its vsock stream.
struct Vm {
    child: Option<KillOnDrop>,
    stream: UnixStream,
    started: Instant,
    /// VMM start to Hello.
    cold: Duration,
    hello: String,
    dir: ScratchDir,
}

/// The VMM's metrics file in a VM's scratch directory.
const METRICS_FILE: &str = "metrics.json";

/// `--metrics-path` to [`METRICS_FILE`] in `dir` (read back by [`Vm::metrics`]).
fn metrics_flags(dir: &ScratchDir) -> Vec<std::ffi::OsString> {
    vec![
        "--metrics-path".into(),
        dir.join(METRICS_FILE).into_os_string(),
    ]
}

impl Vm {
    /// The counters of the VMM's metrics file (booted with [`metrics_flags`]).
    fn metrics(&self) -> Metrics {
        Metrics::read(&self.dir.join(METRICS_FILE))
    }

    fn boot(image: &Image, boot_args: &str, entry: &str) -> Vm {
        Vm::boot_with(image, boot_args, entry, |_| vec![])
    }

    /// [`Vm::boot`] with more VMM flags, given the VM's scratch directory.
    fn boot_with(
        image: &Image,
        boot_args: &str,
        entry: &str,
        flags: impl FnOnce(&ScratchDir) -> Vec<std::ffi::OsString>,
    ) -> Vm {
        require_kvm();
        let vmm = require_bin("vmm");
        // Short: the vsock socket paths must fit in sun_path.
        let dir = ScratchDir::new("kfn");
        let uds = dir.join("v.sock");
        let listen_path = dir.join(format!("v.sock_{}", kiln_protocol::GUEST_CONNECT_PORT));
        let listener = UnixListener::bind(&listen_path)
            .unwrap_or_else(|e| panic!("listen on {}: {e}", listen_path.display()));
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let config = serde_json::json!({
            "boot-source": {
                "kernel_image_path": image.path,
                "boot_args": boot_args,
            },
            "machine-config": {
                "vcpu_count": image.manifest.vcpus,
                "mem_size_mib": image.manifest.memory_mib,
            },
            "vsock": { "guest_cid": 3, "uds_path": uds },
        });
        let config_path = dir.write("vm.json", config.to_string());
        let started = Instant::now();
        let mut child = KillOnDrop::new(spawn(
            Command::new(vmm)
                .arg("--config-file")
                .arg(&config_path)
                .arg("--no-api")
                .args(["--boot-entry", entry])
                .args(flags(&dir))
                .stdin(Stdio::null()),
        ));
        let stream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if started.elapsed() > TIMEOUT || matches!(child.try_wait(), Ok(Some(_))) {
                        let f = wait_with_timeout(&mut child, Duration::from_secs(5), started);
                        let sigsys = f.status.and_then(|s| s.signal()) == Some(libc::SIGSYS);
                        let why = if sigsys {
                            " (the VMM was killed by SIGSYS: its seccomp filters refuse a system \
                             call it needs, e.g. the vsock device's; see policies/seccomp)"
                        } else {
                            ""
                        };
                        panic!("the guest never connected to the vsock port{why}\n{f}");
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        stream.set_nonblocking(false).expect("blocking stream");
        stream
            .set_read_timeout(Some(TIMEOUT))
            .expect("read timeout");
        let mut vm = Vm {
            child: Some(child),
            stream,
            started,
            cold: Duration::ZERO,
            hello: String::new(),
            dir,
        };
        let (h, payload) = vm.read_frame();
        vm.cold = started.elapsed();
        assert_eq!((h.kind, h.id), (Kind::Hello, 0), "first frame");
        vm.hello = String::from_utf8(payload).expect("hello is UTF-8");
        vm
    }

    fn read_frame(&mut self) -> (Header, Vec<u8>) {
        let mut raw = [0u8; HEADER_LEN];
        if let Err(e) = self.stream.read_exact(&mut raw) {
            let f = self.finish();
            panic!("reading a frame header: {e}\n{f}");
        }
        let h = Header::decode(&raw, kiln_protocol::DEFAULT_MAX_PAYLOAD)
            .unwrap_or_else(|e| panic!("bad frame from the guest: {e}"));
        let mut payload = vec![0u8; h.len as usize];
        self.stream
            .read_exact(&mut payload)
            .unwrap_or_else(|e| panic!("reading a {:?} payload: {e}", h.kind));
        (h, payload)
    }

    /// Sends one event; returns the answer (skipping Log frames) and the round trip.
    fn invoke(&mut self, id: u32, event: &[u8]) -> (Header, Vec<u8>, Duration) {
        let t = Instant::now();
        let len = u32::try_from(event.len()).expect("event under 4 GiB");
        let header = Header::new(Kind::Invoke, id, len).encode();
        self.stream.write_all(&header).expect("write invoke header");
        self.stream.write_all(event).expect("write event");
        loop {
            let (h, p) = self.read_frame();
            if h.kind == Kind::Log {
                continue;
            }
            assert_eq!(h.id, id, "answer to invocation {id}: {h:?}");
            return (h, p, t.elapsed());
        }
    }

    fn expect_response(&mut self, id: u32, event: &[u8]) -> (Vec<u8>, Duration) {
        let (h, p, dt) = self.invoke(id, event);
        assert_eq!(
            h.kind,
            Kind::Response,
            "invocation {id}: {:?}",
            (h.kind == Kind::Error).then(|| decode_error(&p))
        );
        (p, dt)
    }

    fn expect_error(&mut self, id: u32, event: &[u8]) -> (ErrorCode, String) {
        let (h, p, _) = self.invoke(id, event);
        assert_eq!(
            h.kind,
            Kind::Error,
            "invocation {id}: {}",
            String::from_utf8_lossy(&p)
        );
        let (code, msg) = decode_error(&p);
        (code, msg.to_string())
    }

    /// Closes the stream (the guest then stops its VM) and collects the VMM's output.
    fn finish(&mut self) -> Finished {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        match self.child.take() {
            Some(mut c) => wait_with_timeout(&mut c, Duration::from_secs(10), self.started),
            None => panic!("finish called twice"),
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[test]
fn echo_answers_json_and_stays_warm_through_both_entries() {
    let image = image("echo");
    for entry in ["pvh", "linux64"] {
        let mut vm = Vm::boot(&image, "", entry);
        assert_eq!(vm.hello, "echo");
        let mut warm = Vec::new();
        for (id, event) in (1u32..).zip([
            &br#"{"a": [1, 2, {"b": null}], "s": "\u00e9"}"#[..],
            b"42",
            b"[]",
        ]) {
            let (out, dt) = vm.expect_response(id, event);
            let mut want = b"{\"echo\":".to_vec();
            want.extend_from_slice(event);
            want.push(b'}');
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&want)
            );
            warm.push(dt);
        }
        let (code, msg) = vm.expect_error(9, b"{\"a\": tru}");
        assert_eq!(code, ErrorCode::Handler);
        assert_eq!(msg, "event is not JSON: invalid literal at byte 6");
        // Still warm after a handler error.
        vm.expect_response(10, b"{}");
        println!(
            "echo ({entry}): VMM start to Hello {:.2} ms; warm invocations {:?} ms",
            ms(vm.cold),
            warm.iter()
                .map(|d| (ms(*d) * 1000.0).round() / 1000.0)
                .collect::<Vec<_>>()
        );
        let f = vm.finish();
        assert_eq!(
            f.code(),
            0,
            "the guest stops its VM when the worker hangs up\n{f}"
        );
        assert!(f.stderr.contains("i8042"), "{f}");
    }
}

/// `vmm --coalesce-mmio`: the vsock device's set-up writes (features, queues) reach the VMM
/// through KVM's coalesced MMIO ring, applied before the next exit: the guest connects and
/// echo answers as without the flag, with far fewer MMIO write exits (the status writes
/// only), per the VMM's metrics.
#[test]
fn with_coalesced_mmio_the_device_comes_up_with_fewer_exits_and_echo_answers() {
    let image = image("echo");
    let mut writes = Vec::new();
    for coalesce in [false, true] {
        let mut vm = Vm::boot_with(&image, "", "linux64", |dir| {
            let mut flags = metrics_flags(dir);
            if coalesce {
                flags.push("--coalesce-mmio".into());
            }
            flags
        });
        assert_eq!(vm.hello, "echo");
        for id in 1..=3 {
            let (out, _) = vm.expect_response(id, b"[1]");
            assert_eq!(out, b"{\"echo\":[1]}");
        }
        let f = vm.finish();
        assert_eq!(f.code(), 0, "{f}");
        let m = vm.metrics();
        assert_eq!(m.get("vcpu.unhandled_mmio"), 0, "{m:?}");
        writes.push(m.get("vcpu.exit_mmio_write"));
    }
    // Without: every register write exits (~24 for one vsock device); with: the four status
    // writes (ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK) and nothing else.
    assert!(writes[0] >= 20, "{writes:?}");
    assert!(writes[1] <= 4, "{writes:?}");
}

/// The runtime checks each command-line window's device id as the first access of its
/// start-up batch: windows that hold no virtio-vsock device (here two with nothing behind
/// them, one with an IRQ the IOAPIC does not have) come before the VMM's own entry, and the
/// guest still finds its device, connects and answers. The VMM's metrics show the empty
/// windows were read (their ids) and nothing was written to them.
#[test]
fn windows_without_a_vsock_device_are_skipped_by_the_start_up_batch() {
    let image = image("echo");
    let mut vm = Vm::boot_with(
        &image,
        "virtio_mmio.device=4K@0xdf000000:5 virtio_mmio.device=4K@0xdf001000:99",
        "linux64",
        metrics_flags,
    );
    assert_eq!(vm.hello, "echo");
    let (out, _) = vm.expect_response(1, b"[1]");
    assert_eq!(out, b"{\"echo\":[1]}");
    let f = vm.finish();
    assert_eq!(f.code(), 0, "{f}");
    // Two reads where no device is (the two device ids), no write.
    let m = vm.metrics();
    assert_eq!(m.get("vcpu.unhandled_mmio"), 2, "{m:?}");
}

#[test]
fn counter_keeps_its_state_between_invocations_of_a_warm_vm() {
    let image = image("counter");
    let mut vm = Vm::boot(&image, "", "pvh");
    assert_eq!(vm.hello, "counter");
    let mut bytes = 0;
    for n in 1..=5u32 {
        let event = vec![b'x'; n as usize * 10];
        bytes += event.len();
        let (out, _) = vm.expect_response(n, &event);
        assert_eq!(
            String::from_utf8_lossy(&out),
            format!("{{\"invocations\":{n},\"bytes\":{bytes}}}")
        );
    }
    drop(vm);
    // A fresh VM starts from scratch.
    let mut vm = Vm::boot(&image, "", "pvh");
    let (out, _) = vm.expect_response(1, b"y");
    assert_eq!(
        String::from_utf8_lossy(&out),
        "{\"invocations\":1,\"bytes\":1}"
    );
}

#[test]
fn a_panic_is_reported_as_a_structured_error_then_the_vm_stops() {
    let image = image("panic");
    let mut vm = Vm::boot(&image, "", "pvh");
    assert_eq!(vm.hello, "panic");
    let (code, msg) = vm.expect_error(7, b"boom");
    assert_eq!(code, ErrorCode::Panic);
    assert_eq!(
        msg,
        "panicked at src/main.rs:37:14: the panic function panics on every event (4 bytes)"
    );
    // The guest stops its VM by itself (i8042 reset) once the frame is out.
    let f = match vm.child.take() {
        Some(mut c) => wait_with_timeout(&mut c, Duration::from_secs(10), vm.started),
        None => unreachable!(),
    };
    assert_eq!(f.code(), 0, "{f}");
    assert!(
        f.stdout
            .contains("KILN-RT: panic panicked at src/main.rs:37:14"),
        "{f}"
    );
}

#[test]
fn cpu_exceptions_are_reported_as_structured_errors() {
    let image = image("panic");
    for (event, start, want) in [
        (
            "null",
            "CPU exception 14 (#PF page fault) at rip=0x",
            "address=0x0 error=0x4: null pointer",
        ),
        (
            "overflow",
            "CPU exception 14 (#PF page fault) at rip=0x",
            "stack overflow",
        ),
        // The function's own `cli` is not taken for the runtime's register batch (which
        // would read a list at address 0 in ring 0 and reset the VM unreported).
        (
            "cli",
            "CPU exception 13 (#GP general protection) at rip=0x",
            "",
        ),
    ] {
        let mut vm = Vm::boot(&image, "", "linux64");
        let (code, msg) = vm.expect_error(1, event.as_bytes());
        assert_eq!(code, ErrorCode::Panic, "{event}: {msg}");
        assert!(
            msg.starts_with(start) && msg.ends_with(want),
            "{event}: {msg}"
        );
        let f = match vm.child.take() {
            Some(mut c) => wait_with_timeout(&mut c, Duration::from_secs(10), vm.started),
            None => unreachable!(),
        };
        assert_eq!(f.code(), 0, "{event}: the VM stops after the report\n{f}");
    }
}

#[test]
fn events_over_the_limit_are_refused_and_the_vm_stays_warm() {
    let image = image("echo");
    let limit = image.manifest.max_event_bytes as usize;
    let mut vm = Vm::boot(&image, "", "pvh");
    let (code, msg) = vm.expect_error(1, &vec![b' '; limit + 1]);
    assert_eq!(code, ErrorCode::EventTooLarge);
    assert!(msg.contains(&format!("{}", limit + 1)), "{msg}");
    // An event of exactly the limit (a JSON string) goes through, in many vsock packets.
    let mut event = vec![b'a'; limit];
    event[0] = b'"';
    event[limit - 1] = b'"';
    let (out, dt) = vm.expect_response(2, &event);
    assert_eq!(out.len(), limit + 9);
    assert_eq!(&out[..9], b"{\"echo\":\"");
    println!(
        "echo: a {limit}-byte event round trip took {:.2} ms",
        ms(dt)
    );
}

#[test]
fn a_cpu_bound_function_runs_at_native_speed() {
    let image = image("hash");
    let mut vm = Vm::boot(&image, "", "pvh");
    assert_eq!(vm.hello, "hash");
    let (out, _) = vm.expect_response(1, br#"{"rounds": 1}"#);
    assert_eq!(
        String::from_utf8_lossy(&out),
        r#"{"rounds":1,"sha256":"dd54691d72efc1894c983c129b21c4870c168705f52f8830eea0f3d0ea4a7dea"}"#
    );
    let (out, small) = vm.expect_response(2, br#"{"rounds": 1000}"#);
    assert_eq!(
        String::from_utf8_lossy(&out),
        r#"{"rounds":1000,"sha256":"6107a513933255aa8eb39e9d2018595d5c79e4f5e65edac5bd1996d1685624fb"}"#
    );
    // 100,000 SHA-256 compressions: ~2*10^8 instructions. Emulated at ring 0 (~1 µs per
    // instruction on the development hosts) that would take minutes; at CPL 3 it is native.
    let (_, big) = vm.expect_response(3, br#"{"rounds": 100000}"#);
    println!(
        "hash: VMM start to Hello {:.2} ms; 1000 rounds {:.2} ms; 100000 rounds {:.1} ms",
        ms(vm.cold),
        ms(small),
        ms(big)
    );
    assert!(
        big < Duration::from_secs(10),
        "100000 SHA-256 rounds took {big:?}: the handler does not run natively"
    );
    let (code, _) = vm.expect_error(4, br#"{"rounds": 0}"#);
    assert_eq!(code, ErrorCode::Handler);
}
