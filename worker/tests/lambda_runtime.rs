//! Lambda's Runtime API as kiln-init's agent serves it to a function's runtime, with runtimes
//! nobody on this team wrote against Kiln: the Python runtime interface client (awslambdaric,
//! from PyPI, pinned in tests/python/requirements.txt) running examples/functions/lambda-python,
//! and the custom `provided.al2023` bootstrap of examples/functions/lambda-bootstrap, unpacked
//! from the initramfs the builder makes for it.
//!
//! Mode: the agent runs as a HOST PROCESS (`kiln-init agent --unix SOCKET --lambda CONFIG
//! --task-root DIR`), the worker's side of the invocation protocol being this test over a Unix
//! socket instead of vsock; the Python function also in a CHROOT of its whole unpacked
//! initramfs (its root file system made by its make-rootfs.sh: the guest's files, the host's
//! kernel). Guest user space cannot run on hosts whose KVM emulates guest kernel code
//! (kvm_pvm: shared/notes/host-kvm.md); the same functions in a microVM are
//! tests/tests/slow_lambda_linux.rs (slow tier). Each test prints its mode.

use kiln_protocol::{decode_error, ErrorCode, Kind, DEFAULT_MAX_PAYLOAD};
use kiln_tests::{require_bin, KillOnDrop, ScratchDir};
use kiln_worker::channel::Channel;
use kiln_worker::context::{Identity, InvocationContext};
use serde_json::Value;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/functions")
        .join(name)
}

/// The agent (a host process) for a Lambda function, and the worker's end of its stream.
struct Agent {
    child: KillOnDrop,
    channel: Channel,
    next_id: u32,
    _dir: ScratchDir,
}

/// What one invocation gave: the logs, and the response or the error object.
struct Invoked {
    logs: String,
    result: Result<Vec<u8>, (ErrorCode, String)>,
}

impl Invoked {
    fn json(&self) -> Value {
        match &self.result {
            Ok(body) => serde_json::from_slice(body).unwrap_or(Value::Null),
            Err((code, m)) => panic!("an error ({code:?}): {m}\nlogs: {}", self.logs),
        }
    }

    /// The Lambda error object of a failed invocation.
    fn error(&self) -> Value {
        match &self.result {
            Err((ErrorCode::Function, m)) => serde_json::from_str(m).expect("a JSON error object"),
            other => panic!("not a function error: {other:?}\nlogs: {}", self.logs),
        }
    }
}

fn mode_banner() {
    eprintln!(
        "mode: host process (kiln-init agent over a Unix socket; this host {} run guest user space)",
        if kiln_tests::is_pvm_host() {
            "cannot (kvm_pvm)"
        } else {
            "could, but this fast-tier test does not boot a guest kernel"
        }
    );
}

impl Agent {
    /// Starts the agent on a Lambda configuration, with the function's code in `task_root`
    /// and `path_prefix` first in the runtime's `PATH`; waits for its Hello (after the
    /// runtime's init).
    fn start(name: &str, config: &[u8], task_root: &Path, path_prefix: Option<&Path>) -> Agent {
        mode_banner();
        let dir = ScratchDir::new("kiln-lambda");
        let conf = dir.join("lambda.conf");
        std::fs::write(&conf, config).unwrap();
        let sock = dir.join("v.sock_1024");
        let listener = UnixListener::bind(&sock).unwrap();
        let mut path = std::env::var("PATH").unwrap_or_default();
        if let Some(p) = path_prefix {
            path = format!("{}:{path}", p.display());
        }
        let mut cmd = Command::new(require_bin("kiln-init"));
        cmd.args(["agent", "--unix"])
            .arg(&sock)
            .arg("--lambda")
            .arg(&conf)
            .arg("--task-root")
            .arg(task_root)
            .args(["--name", name])
            .env("PATH", path);
        Agent::connect(name, &mut cmd, &listener, dir)
    }

    /// Spawns `cmd` (an agent that connects to `listener`) and waits for its Hello.
    fn connect(name: &str, cmd: &mut Command, listener: &UnixListener, dir: ScratchDir) -> Agent {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn kiln-init agent");
        let child = KillOnDrop::new(child);
        listener.set_nonblocking(true).unwrap();
        let t = Instant::now();
        let stream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(_) if t.elapsed() < Duration::from_secs(60) => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("the agent did not connect within 60 s: {e}"),
            }
        };
        stream.set_nonblocking(false).unwrap();
        let mut channel = Channel::new(stream, DEFAULT_MAX_PAYLOAD);
        let hello = channel
            .read_frame(Instant::now() + Duration::from_secs(60))
            .expect("hello");
        assert_eq!(
            (hello.header.kind, hello.payload.as_slice()),
            (Kind::Hello, name.as_bytes())
        );
        Agent {
            child,
            channel,
            next_id: 1,
            _dir: dir,
        }
    }

    /// One invocation with a fresh Lambda context (`remaining` before the timeout).
    fn invoke(&mut self, event: &str, remaining: Duration) -> (InvocationContext, Invoked) {
        let ctx = InvocationContext::new(&Identity::default(), "f");
        self.invoke_with(ctx, event, remaining)
    }

    /// One invocation with the Lambda context `ctx`.
    fn invoke_with(
        &mut self,
        ctx: InvocationContext,
        event: &str,
        remaining: Duration,
    ) -> (InvocationContext, Invoked) {
        let id = self.next_id;
        self.next_id += 1;
        let deadline = Instant::now() + remaining + Duration::from_secs(30);
        self.channel
            .send(Kind::Context, id, &ctx.payload(remaining), deadline)
            .unwrap();
        self.channel
            .send(Kind::Invoke, id, event.as_bytes(), deadline)
            .unwrap();
        let mut logs = Vec::new();
        loop {
            let f = self.channel.read_frame(deadline).expect("an answer");
            assert_eq!(f.header.id, id, "frames carry the invocation's id");
            match f.header.kind {
                Kind::Log => logs.extend_from_slice(&f.payload),
                Kind::Response => {
                    return (
                        ctx,
                        Invoked {
                            logs: String::from_utf8_lossy(&logs).into_owned(),
                            result: Ok(f.payload),
                        },
                    )
                }
                Kind::Error => {
                    let (code, message) = decode_error(&f.payload);
                    return (
                        ctx,
                        Invoked {
                            logs: String::from_utf8_lossy(&logs).into_owned(),
                            result: Err((code, message.to_string())),
                        },
                    );
                }
                other => panic!("unexpected {other:?} frame"),
            }
        }
    }
}

const THREE_SECONDS: Duration = Duration::from_secs(3);

fn python_config(handler: Option<&str>) -> Vec<u8> {
    let mut m = kiln_guest_builder::Manifest::load(&example("lambda-python")).unwrap();
    if let Some(h) = handler {
        m.handler = Some(h.into());
    }
    kiln_guest_builder::lambda::config(&m)
}

/// The agent for examples/functions/lambda-python, its code packed as the builder packs it
/// into /var/task (here in a scratch directory); the Python clients' virtual environment
/// stands for the root file system (the host's Python, as make-rootfs.sh packs it).
fn python_agent(handler: Option<&str>) -> (Agent, ScratchDir) {
    let venv = kiln_tests::python::require_clients();
    eprintln!(
        "runtime: awslambdaric {} (python3 of {})",
        kiln_tests::python::installed_version(&venv, "awslambdaric").unwrap_or_default(),
        venv.display()
    );
    let dir = example("lambda-python");
    let m = kiln_guest_builder::Manifest::load(&dir).unwrap();
    let members = kiln_guest_builder::lambda::function_entries(&dir, &m, None).unwrap();
    let task = ScratchDir::new("kiln-lambda-task");
    unpack_task(members, task.path());
    let agent = Agent::start(
        "lambda-python",
        &python_config(handler),
        task.path(),
        Some(&venv.join("bin")),
    );
    (agent, task)
}

#[test]
fn awslambdaric_serves_a_python_handler_through_the_agents_runtime_api() {
    let (mut a, _task) = python_agent(None);
    let (ctx, r) = a.invoke(r#"{"hello": "world"}"#, THREE_SECONDS);
    let v = r.json();
    assert_eq!(v["echo"], serde_json::json!({"hello": "world"}), "{v}");
    assert_eq!(
        v["request_id"], ctx.request_id,
        "the function sees the request id"
    );
    assert_eq!(v["function_arn"], ctx.function_arn, "{v}");
    assert_eq!(v["function_name"], "lambda-python", "{v}");
    assert_eq!(
        v["greeting"], "hello from lambda-python",
        "the manifest's environment"
    );
    let remaining = v["remaining_ms"].as_u64().unwrap();
    assert!((1..=3000).contains(&remaining), "{v}");
    assert!(
        r.logs
            .contains(&format!("invocation {} of lambda-python", ctx.request_id)),
        "the handler's log line: {}",
        r.logs
    );
    assert!(r.logs.contains("handled"), "{}", r.logs);

    assert!(
        v["client_custom"].is_null() && v["trace_id"].is_null(),
        "{v}"
    );

    // A warm runtime: the next invocation is served by the same process, with its own id,
    // client context and trace id.
    let mut ctx2 = InvocationContext::new(&Identity::default(), "f");
    ctx2.client_context = Some(r#"{"custom": {"k": "v"}}"#.into());
    ctx2.trace_id = Some("Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1".into());
    let (ctx2, r) = a.invoke_with(ctx2, "[1, 2]", THREE_SECONDS);
    let v = r.json();
    assert_eq!(v["request_id"], ctx2.request_id);
    assert_ne!(ctx.request_id, ctx2.request_id);
    assert_eq!(v["client_custom"], serde_json::json!({"k": "v"}), "{v}");
    assert_eq!(v["trace_id"], ctx2.trace_id.clone().unwrap(), "{v}");

    // The handler raises: the runtime posts its error object (with a stack trace).
    let (_, r) = a.invoke(r#"{"fail": "bad input"}"#, THREE_SECONDS);
    let e = r.error();
    assert_eq!(e["errorType"], "ValueError", "{e}");
    assert_eq!(e["errorMessage"], "bad input", "{e}");
    assert!(
        e["stackTrace"].as_array().is_some_and(|s| !s.is_empty()),
        "{e}"
    );
    assert!(r.logs.contains("ValueError"), "{}", r.logs);

    // The runtime exits: Runtime.ExitError, and the next invocation gets a fresh runtime.
    let (ctx, r) = a.invoke(r#"{"exit": 3}"#, THREE_SECONDS);
    let e = r.error();
    assert_eq!(e["errorType"], "Runtime.ExitError", "{e}");
    assert_eq!(
        e["errorMessage"],
        format!(
            "RequestId: {} Error: Runtime exited with error: exit status 3",
            ctx.request_id
        )
    );
    let (_, r) = a.invoke(r#"{"after": "exit"}"#, THREE_SECONDS);
    assert_eq!(r.json()["echo"]["after"], "exit");

    // Past the deadline: Sandbox.Timedout, the runtime is killed, the next one works.
    let (ctx, r) = a.invoke(r#"{"sleep_ms": 5000}"#, Duration::from_millis(500));
    let e = r.error();
    assert_eq!(e["errorType"], "Sandbox.Timedout", "{e}");
    assert_eq!(
        e["errorMessage"],
        format!(
            "RequestId: {} Error: Task timed out after 0.50 seconds",
            ctx.request_id
        )
    );
    let (_, r) = a.invoke(r#"{"after": "timeout"}"#, THREE_SECONDS);
    assert_eq!(r.json()["echo"]["after"], "timeout");

    // A response over 6 MiB: Function.ResponseSizeTooLarge.
    let (_, r) = a.invoke(r#"{"big_kb": 7000}"#, Duration::from_secs(10));
    let e = r.error();
    assert_eq!(e["errorType"], "Function.ResponseSizeTooLarge", "{e}");
    let (_, r) = a.invoke(r#"{"after": "big"}"#, THREE_SECONDS);
    assert_eq!(r.json()["echo"]["after"], "big");

    // The host hangs up: the agent ends cleanly, and its runtime with it.
    drop(std::mem::replace(
        &mut a.channel,
        Channel::new(std::os::unix::net::UnixStream::pair().unwrap().0, 1),
    ));
    let status = a.child.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn a_handler_that_cannot_be_imported_is_an_init_error() {
    let (mut a, _task) = python_agent(Some("nosuchmodule.handler"));
    for _ in 0..2 {
        let (_, r) = a.invoke("{}", THREE_SECONDS);
        let e = r.error();
        assert_eq!(e["errorType"], "Runtime.ImportModuleError", "{e}");
        assert!(
            e["errorMessage"]
                .as_str()
                .unwrap()
                .contains("Unable to import module 'nosuchmodule'"),
            "{e}"
        );
    }
}

/// Writes the members under `var/task/` of an initramfs into `dir` (files with their modes,
/// links); returns the configuration it holds.
fn unpack_task(members: Vec<kiln_guest_builder::CpioEntry>, dir: &Path) -> Vec<u8> {
    use std::os::unix::fs::PermissionsExt;
    let mut config = None;
    for m in members {
        if m.name == "fn/lambda.conf" {
            config = Some(m.data.clone());
        }
        let Some(rel) = m.name.strip_prefix("var/task/") else {
            continue;
        };
        let path = dir.join(rel);
        match m.mode & kiln_guest_builder::S_IFMT {
            kiln_guest_builder::S_IFDIR => std::fs::create_dir_all(&path).unwrap(),
            kiln_guest_builder::S_IFLNK => {
                std::os::unix::fs::symlink(String::from_utf8(m.data).unwrap(), &path).unwrap()
            }
            _ => {
                std::fs::write(&path, &m.data).unwrap();
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(m.mode & 0o7777))
                    .unwrap();
            }
        }
    }
    config.expect("the initramfs holds fn/lambda.conf")
}

#[test]
fn a_custom_bootstrap_runs_from_its_initramfs() {
    let dir = example("lambda-bootstrap");
    let out = ScratchDir::new("kiln-lambda-build");
    let options = kiln_guest_builder::BuildOptions {
        init: Some(require_bin("kiln-init")),
    };
    let image = kiln_guest_builder::build_function_with(&dir, &out.join("out"), &options)
        .unwrap_or_else(|e| panic!("build lambda-bootstrap: {e}"));
    let task = out.join("task");
    std::fs::create_dir_all(&task).unwrap();
    let members = kiln_guest_builder::read_newc(&std::fs::read(&image.path).unwrap()).unwrap();
    assert!(
        members.iter().any(|m| m.name == "init"),
        "kiln-init is /init"
    );
    let config = unpack_task(members, &task);
    assert!(
        task.join("bootstrap").is_file(),
        "the exec is /var/task/bootstrap"
    );

    let mut a = Agent::start("lambda-bootstrap", &config, &task, None);
    let (ctx, r) = a.invoke(r#"{"n": 1}"#, THREE_SECONDS);
    let v = r.json();
    assert_eq!(v["echo"], serde_json::json!({"n": 1}), "{v}");
    assert_eq!(v["request_id"], ctx.request_id);
    assert_eq!(v["function_arn"], ctx.function_arn);
    assert_eq!(v["greeting"], "hello from lambda-bootstrap");
    assert!(
        r.logs
            .contains(&format!("lambda-bootstrap: invocation {}", ctx.request_id)),
        "{}",
        r.logs
    );
    let (_, r) = a.invoke(r#"{"fail": "no way"}"#, THREE_SECONDS);
    let e = r.error();
    assert_eq!(
        (e["errorType"].as_str(), e["errorMessage"].as_str()),
        (Some("BootstrapError"), Some("no way"))
    );
    let (ctx, r) = a.invoke(r#"{"exit": 4}"#, THREE_SECONDS);
    assert_eq!(
        r.error()["errorMessage"],
        format!(
            "RequestId: {} Error: Runtime exited with error: exit status 4",
            ctx.request_id
        )
    );
    let (_, r) = a.invoke(r#"{"n": 2}"#, THREE_SECONDS);
    assert_eq!(r.json()["echo"]["n"], 2);
}

/// A copy of examples/functions/lambda-python in `functions/` with a root file system made
/// by its make-rootfs.sh (the host's python3, awslambdaric from PyPI).
fn python_function_with_rootfs(functions: &Path) -> PathBuf {
    let src = example("lambda-python");
    let dst = functions.join("lambda-python");
    std::fs::create_dir_all(&dst).unwrap();
    for f in ["app.py", "kiln.json", "make-rootfs.sh"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    kiln_tests::require_program("python3", "python3");
    let out = Command::new(dst.join("make-rootfs.sh"))
        .arg(dst.join("rootfs"))
        .env("KILN_REQUIREMENTS", kiln_tests::python::requirements())
        .env(
            "PIP_CACHE_DIR",
            kiln_tests::cache_dir().join("python/pip-cache"),
        )
        .output()
        .expect("run make-rootfs.sh");
    assert!(
        out.status.success(),
        "make-rootfs.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dst
}

/// Writes every member of `cpio` under `root` (directories, files with their modes, links),
/// a later member replacing an earlier one, as the kernel unpacks an initramfs.
fn unpack_all(cpio: &Path, root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let members = kiln_guest_builder::read_newc(&std::fs::read(cpio).unwrap()).unwrap();
    for m in members {
        let path = root.join(&m.name);
        let mode = std::fs::Permissions::from_mode(m.mode & 0o7777);
        match m.mode & kiln_guest_builder::S_IFMT {
            kiln_guest_builder::S_IFDIR => {
                std::fs::create_dir_all(&path).unwrap();
                std::fs::set_permissions(&path, mode).unwrap();
            }
            kiln_guest_builder::S_IFLNK => {
                let _ = std::fs::remove_file(&path);
                std::os::unix::fs::symlink(String::from_utf8(m.data).unwrap(), &path).unwrap()
            }
            _ => {
                let _ = std::fs::remove_file(&path);
                std::fs::write(&path, &m.data).unwrap();
                std::fs::set_permissions(&path, mode).unwrap();
            }
        }
    }
}

#[test]
fn the_python_functions_initramfs_runs_in_a_chroot() {
    kiln_tests::require_root();
    eprintln!("mode: chroot of lambda-python's unpacked initramfs (its make-rootfs.sh root file system), kiln-init's agent as a host process in it: the guest's files, the host's kernel");
    let scratch = ScratchDir::new("kiln-lpy");
    let dir = python_function_with_rootfs(&scratch.join("functions"));
    let options = kiln_guest_builder::BuildOptions {
        init: Some(require_bin("kiln-init")),
    };
    let image = kiln_guest_builder::build_function_with(&dir, &scratch.join("out"), &options)
        .unwrap_or_else(|e| panic!("build lambda-python: {e}"));
    let root = scratch.join("root");
    std::fs::create_dir_all(&root).unwrap();
    unpack_all(&image.path, &root);
    // The guest's /dev is devtmpfs; the chroot gets the one node a process start needs.
    let status = Command::new(kiln_tests::require_program("mknod", "coreutils"))
        .arg(root.join("dev/null"))
        .args(["c", "1", "3"])
        .status()
        .unwrap();
    assert!(status.success());
    let listener = UnixListener::bind(root.join("tmp/v.sock")).unwrap();
    let mut cmd = Command::new(kiln_tests::require_program("chroot", "coreutils"));
    cmd.arg(&root)
        .args(["/init", "agent", "--unix", "/tmp/v.sock", "--lambda"])
        .arg(kiln_protocol::lambda_config::PATH)
        .args(["--task-root", "/var/task", "--name", "lambda-python"])
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin");
    let mut a = Agent::connect("lambda-python", &mut cmd, &listener, scratch);
    let (ctx, r) = a.invoke(r#"{"from": "chroot"}"#, THREE_SECONDS);
    let v = r.json();
    assert_eq!(v["echo"], serde_json::json!({"from": "chroot"}), "{v}");
    assert_eq!(v["request_id"], ctx.request_id, "{v}");
    assert_eq!(v["greeting"], "hello from lambda-python", "{v}");
    let (_, r) = a.invoke(r#"{"fail": "in the chroot"}"#, THREE_SECONDS);
    assert_eq!(r.error()["errorType"], "ValueError");
}
