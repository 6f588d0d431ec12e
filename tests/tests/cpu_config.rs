//! Fast tier: custom CPU templates (`cpu-config`, `PUT /cpu-config`) with the tiny test
//! guest, which prints the CPUID leaves (`cpuid` scenario) and an MSR (`msr` scenario) as it
//! sees them.
//!
//! On the development hosts (kvm_pvm) CPUID masking reaches the guest for some leaves only
//! (docs/vmm.md, "CPUID on emulating hosts"): leaf 1 ECX bit 13 (CX16) and leaf 0x40000001
//! (KVM's features) do, so the templates here change those. MSR modifiers are checked on
//! IA32_PAT (0x277), which every x86-64 vCPU has. A template naming a leaf, an MSR or a KVM
//! capability the host does not have fails the start with a message naming it, from the
//! config file and through the API alike.
//!
//! Needs /dev/kvm and the `vmm` binary.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kiln_tests::process::Followed;
use kiln_tests::tiny::{self, field, parse_hex, TinyOutput};
use kiln_tests::{api, require_bin, require_kvm, run_with_timeout, Finished, ScratchDir};

const TIMEOUT: Duration = Duration::from_secs(30);
const CX16: u64 = 1 << 13;
/// A bit of leaf 0x40000001 EAX (KVM's features) the template clears.
const KVM_FEATURE_BIT: u64 = 1 << 12;
/// IA32_PAT after the template: entry 7 (bits 56..63) becomes 1 (write-combining).
const PAT_TEMPLATE: &str = r#"{"addr": "0x277", "bitmap": "0b00000001xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#;

fn template() -> String {
    format!(
        r#"{{"kvm_capabilities": ["!4"],
            "cpuid_modifiers": [
              {{"leaf": "0x1", "subleaf": "0x0", "flags": 0,
                "modifiers": [{{"register": "ecx", "bitmap": "0bxxxxxxxxxxxxxxxxxx0xxxxxxxxxxxxx"}}]}},
              {{"leaf": "0x40000001", "subleaf": "0", "flags": 0,
                "modifiers": [{{"register": "eax", "bitmap": "0b0_xxxx_xxxx_xxxx"}}]}}],
            "msr_modifiers": [{PAT_TEMPLATE}]}}"#
    )
}

fn config(dir: &ScratchDir, scenario: &str, cpu_config: Option<&str>) -> PathBuf {
    let cpu = cpu_config.map_or(String::new(), |c| format!(",\n \"cpu-config\": {c}"));
    dir.write(
        "vm.json",
        format!(
            "{{\"boot-source\": {{\"kernel_image_path\": {:?}, \"boot_args\": \"kiln.test={scenario}\"}},\n \"machine-config\": {{\"vcpu_count\": 1, \"mem_size_mib\": 32}}{cpu}}}\n",
            tiny::tiny_guest().to_str().expect("utf-8 path")
        ),
    )
}

fn boot(cfg: &Path) -> Finished {
    require_kvm();
    run_with_timeout(
        Command::new(require_bin("vmm"))
            .arg("--config-file")
            .arg(cfg)
            .arg("--no-api"),
        TIMEOUT,
    )
}

fn hex_field(out: &TinyOutput, leaf: u32, reg: &str) -> u64 {
    let fields = out
        .cpuid(leaf)
        .unwrap_or_else(|| panic!("no cpuid line for leaf {leaf:#x}: {:?}", out.lines));
    parse_hex(field(&fields, reg).expect("register")).expect("hex")
}

fn pat(out: &TinyOutput) -> u64 {
    let line = &out.topic("msr")[0];
    assert_eq!(field(line, "index"), Some("0x277"));
    parse_hex(field(line, "value").expect("value")).expect("hex")
}

#[test]
fn cpuid_modifiers_reach_the_guest() {
    let dir = ScratchDir::new("kiln-cpu-config");
    let plain = tiny::assert_clean_run(&boot(&config(&dir, "cpuid", None)));
    assert_ne!(
        hex_field(&plain, 1, "ecx") & CX16,
        0,
        "this host offers CX16"
    );
    let kvm_features = hex_field(&plain, 0x4000_0001, "eax");
    assert_ne!(kvm_features & KVM_FEATURE_BIT, 0, "{kvm_features:#x}");

    let t = template();
    let out = tiny::assert_clean_run(&boot(&config(&dir, "cpuid", Some(&t))));
    assert_eq!(hex_field(&out, 1, "ecx") & CX16, 0, "CX16 cleared");
    assert_eq!(
        hex_field(&out, 1, "ecx") | CX16,
        hex_field(&plain, 1, "ecx"),
        "nothing else in leaf 1 ECX changed"
    );
    assert_eq!(
        hex_field(&out, 0x4000_0001, "eax"),
        kvm_features & !KVM_FEATURE_BIT
    );
    // The normalisation still runs after the template: the hypervisor signature is there.
    let hv = out.cpuid(0x4000_0000).expect("hypervisor leaf");
    assert_eq!(field(&hv, "sig"), Some("KVMKVMKVM"));
}

#[test]
fn msr_modifiers_reach_the_guest() {
    let dir = ScratchDir::new("kiln-cpu-config");
    let plain = pat(&tiny::assert_clean_run(&boot(&config(&dir, "msr", None))));
    let t = template();
    let templated = pat(&tiny::assert_clean_run(&boot(&config(
        &dir,
        "msr",
        Some(&t),
    ))));
    assert_eq!(templated, (plain & 0x00ff_ffff_ffff_ffff) | 1 << 56);
    assert_ne!(templated, plain);
}

#[test]
fn the_config_file_may_name_a_template_file() {
    let dir = ScratchDir::new("kiln-cpu-config");
    let file = dir.write("template.json", template());
    let cfg = config(&dir, "msr", Some(&format!("{:?}", file.to_str().unwrap())));
    let out = tiny::assert_clean_run(&boot(&cfg));
    assert_eq!(pat(&out) >> 56, 1);
    let missing = config(&dir, "msr", Some(r#""/nonexistent/template.json""#));
    let f = boot(&missing);
    assert_eq!(f.code(), 152, "{f}");
    assert!(
        f.stderr
            .contains("cpu-config: \"/nonexistent/template.json\" cannot be used"),
        "{f}"
    );
}

#[test]
fn what_kvm_does_not_have_fails_the_start_naming_it() {
    let dir = ScratchDir::new("kiln-cpu-config");
    let cases = [
        (
            r#"{"cpuid_modifiers": [{"leaf": "0x0fffffff", "subleaf": "0x0", "flags": 0, "modifiers": []}]}"#,
            "CPUID leaf 0xfffffff subleaf 0x0 is not one KVM supports on this host",
        ),
        (
            r#"{"msr_modifiers": [{"addr": "0xdeadbeef", "bitmap": "0b1"}]}"#,
            "MSR 0xdeadbeef is not one KVM supports for this vCPU",
        ),
        (
            r#"{"kvm_capabilities": ["999999"]}"#,
            "the host's KVM does not have capability 999999",
        ),
    ];
    for (cpu, want) in cases {
        let f = boot(&config(&dir, "print", Some(cpu)));
        assert_eq!(f.code(), 5, "{cpu}\n{f}");
        assert!(f.stderr.contains(want), "{cpu}: {want}\n{f}");
        assert!(!f.stderr.contains("panicked"), "{f}");
        assert!(
            TinyOutput::parse(&f.stdout).entry.is_none(),
            "the guest never ran"
        );
    }
    // Syntax is checked when the configuration is read.
    let f = boot(&config(
        &dir,
        "print",
        Some(r#"{"msr_modifiers": [{"addr": "0x277", "bitmap": "0b12"}]}"#),
    ));
    assert_eq!(f.code(), 152, "{f}");
    assert!(f.stderr.contains("has '2'"), "{f}");
}

/// The VMM serving its API on a fresh socket, nothing configured.
fn api_vmm(dir: &ScratchDir) -> (Followed, PathBuf) {
    require_kvm();
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
    (vm, sock)
}

#[test]
fn put_cpu_config_through_the_api() {
    let dir = ScratchDir::short("kiln-cpu-api");
    let (vm, sock) = api_vmm(&dir);
    let boot_source = format!(
        "{{\"kernel_image_path\": {:?}, \"boot_args\": \"kiln.test=msr\"}}",
        tiny::tiny_guest().to_str().unwrap()
    );
    assert_eq!(
        api::request(&sock, "PUT", "/boot-source", &boot_source).0,
        204
    );
    // A static template first: the custom one replaces it, as in Firecracker.
    let mc = r#"{"vcpu_count": 1, "mem_size_mib": 32, "cpu_template": "T2"}"#;
    assert_eq!(api::request(&sock, "PUT", "/machine-config", mc).0, 204);
    let bad = api::request(
        &sock,
        "PUT",
        "/cpu-config",
        r#"{"reg_modifiers": [{"addr": "0x1", "bitmap": "0b1"}]}"#,
    );
    assert_eq!(bad.0, 400, "{bad:?}");
    assert!(
        bad.1.contains("reg_modifiers are for aarch64 hosts"),
        "{bad:?}"
    );
    // A leaf KVM lacks: accepted (syntax), refused at InstanceStart, which can be retried.
    let missing = r#"{"cpuid_modifiers": [{"leaf": "0x0fffffff", "subleaf": "0", "flags": 0, "modifiers": []}]}"#;
    assert_eq!(api::request(&sock, "PUT", "/cpu-config", missing).0, 204);
    let start = r#"{"action_type": "InstanceStart"}"#;
    let failed = api::request(&sock, "PUT", "/actions", start);
    assert_eq!(failed.0, 400, "{failed:?}");
    assert!(failed.1.contains("CPUID leaf 0xfffffff"), "{failed:?}");
    assert_eq!(
        api::request(&sock, "PUT", "/cpu-config", &template()).0,
        204
    );
    let (code, mc) = api::request(&sock, "GET", "/machine-config", "");
    assert_eq!(code, 200);
    assert!(mc.contains(r#""cpu_template":"None""#), "{mc}");
    let (_, cfg) = api::request(&sock, "GET", "/vm/config", "");
    let cfg: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    assert_eq!(
        cfg["cpu-config"]["msr_modifiers"][0]["addr"], "0x277",
        "{cfg}"
    );
    // (That it is refused after InstanceStart is the controller's unit test: this guest
    // ends the VM as soon as it has read the MSR.)
    assert_eq!(api::request(&sock, "PUT", "/actions", start).0, 204);
    let f = vm.finish(TIMEOUT);
    let out = TinyOutput::parse(&f.stdout);
    assert!(out.done && out.errors().is_empty(), "{f}");
    assert_eq!(pat(&out) >> 56, 1, "{f}");
}

#[test]
fn the_new_pre_boot_requests_are_refused_once_started() {
    let dir = ScratchDir::short("kiln-cpu-late");
    let (mut vm, sock) = api_vmm(&dir);
    let boot_source = format!(
        "{{\"kernel_image_path\": {:?}, \"boot_args\": \"kiln.test=halt\"}}",
        tiny::tiny_guest().to_str().unwrap()
    );
    assert_eq!(
        api::request(&sock, "PUT", "/boot-source", &boot_source).0,
        204
    );
    let start = r#"{"action_type": "InstanceStart"}"#;
    assert_eq!(api::request(&sock, "PUT", "/actions", start).0, 204);
    assert!(vm.wait_line("halt", TIMEOUT), "{}", vm.seen());
    for (path, body) in [
        ("/cpu-config", "{}"),
        ("/entropy", "{}"),
        ("/serial", r#"{"rate_limiter": null}"#),
    ] {
        let (code, answer) = api::request(&sock, "PUT", path, body);
        assert_eq!(code, 400, "{path}: {answer}");
        assert!(
            answer.contains(&format!("PUT {path} is only possible before InstanceStart")),
            "{path}: {answer}"
        );
    }
    // SIGTERM ends the halted microVM (exit code 0).
    let pid = i32::try_from(vm.child().id()).expect("pid");
    // SAFETY: kill(2) of the VMM this test spawned, with a valid signal number.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let f = vm.finish(TIMEOUT);
    assert_eq!(f.code(), 0, "{f}");
}
