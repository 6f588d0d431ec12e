//! The worker's HTTP edge (`worker/src/server/`) as a client reaches `kiln serve`: bytes on a
//! connection go through the worker's connection loop (`server::serve_connection`: the
//! request buffer, `kiln_http::parse_request` with the worker's 6 MB body limit,
//! keep-alive, `Expect: 100-continue`, the body drain after a refused one), the choice
//! between Kiln's API (`POST /functions/NAME/invocations`, `GET /functions`) and Lambda's
//! Invoke API (`POST /2015-03-31/functions/NAME/invocations`: function names and ARNs,
//! qualifiers, invocation and log types, client contexts, event JSON, unsigned requests'
//! `Authorization` parsed), the pools and the function registry, and every answer's
//! encoding and status. No VM is started: the registry's functions directory holds only
//! functions that cannot be built (a broken manifest, one without sources, a Linux
//! function without kiln-init), so an invocation ends in the registry with its error
//! answer, as it does in production for those.
//!
//! Each request the stream holds is also checked by SigV4 verification with a known
//! credential at a fixed time (`sigv4::check`), as a worker with `--credentials` does.
//!
//! Input: byte 0 seeds the split of the rest into reads (a request cut anywhere, several in
//! one read); bytes 1.. are what the client sends.
//!
//! Checks: every answer is an HTTP/1.1 response whose `Content-Length` bytes follow; the
//! Invoke API's answers carry `x-amzn-RequestId`; error bodies are JSON; nothing follows an
//! answer that says `Connection: close`; a request is never signed by a key it does not
//! name.
#![no_main]

use kiln_fuzz::http::{check_answers, chunks};
use kiln_http::{parse_request, Parsed};
use kiln_worker::context::Identity;
use kiln_worker::function::Registry;
use kiln_worker::instance::{InstanceConfig, Owner};
use kiln_worker::pool::{PoolConfig, Pools};
use kiln_worker::server::lambda::sigv4::{self, Signer};
use kiln_worker::server::lambda::{Credentials, LambdaApi, LambdaConfig};
use kiln_worker::server::{serve_connection, Conn, ServerConfig, MAX_BODY};
use libfuzzer_sys::fuzz_target;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, UNIX_EPOCH};

/// The fixed time of the SigV4 checks: 2024-05-01T12:00:00Z (the seeds are signed then).
const SIGNED_AT: u64 = 1_714_564_800;
/// The known credential.
const CREDENTIALS: &str =
    "[default]\naws_access_key_id = AKIDFUZZ\naws_secret_access_key = fuzz-secret\n";

struct World {
    pools: Arc<Pools>,
    lambda: Arc<LambdaApi>,
    credentials: Credentials,
    cfg: ServerConfig,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("kiln-fuzz-worker-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        kiln_fuzz::remove_at_exit(root.clone());
        let functions = root.join("functions");
        for (name, manifest) in [
            ("broken", "{ this is not json".to_string()),
            ("nocargo", r#"{"name": "nocargo"}"#.to_string()),
            (
                "linuxfn",
                r#"{"name": "linuxfn", "kind": "linux", "exec": "h", "memory_mib": 128}"#.into(),
            ),
            ("badvcpus", r#"{"name": "badvcpus", "vcpus": 2}"#.into()),
        ] {
            let dir = functions.join(name);
            std::fs::create_dir_all(&dir).expect("a function directory");
            std::fs::write(dir.join("kiln.json"), manifest).expect("a manifest");
        }
        let registry = Arc::new(Registry::new(functions, root.join("cache")));
        let unused = PathBuf::from("/nonexistent");
        let instances = Arc::new(InstanceConfig {
            jailer: unused.clone(),
            vmm: unused.clone(),
            chroot_base: unused.clone(),
            state_dir: root.join("state"),
            owner: Arc::new(Owner::acquire(&root.join("state")).expect("the worker's owner lock")),
            profile_path: unused.clone(),
            profile: serde_json::json!({}),
            uid_base: 100_000,
            uid_count: 1,
            parent_cgroup: String::new(),
            memory_overhead_mib: 0,
            start_timeout: Duration::from_secs(1),
            kernel: unused,
            stop_grace: Duration::from_secs(1),
            strict_io: false,
            max_response_bytes: 1 << 20,
            vmm_args: Vec::new(),
        });
        let pools = Pools::new(
            registry,
            instances,
            PoolConfig {
                idle_timeout: None,
                queue_timeout: Duration::ZERO,
                max_queue: 0,
            },
        );
        let lambda = Arc::new(
            LambdaApi::start(
                LambdaConfig {
                    identity: Identity::default(),
                    credentials: None,
                    max_async_events: 4,
                },
                pools.clone(),
            )
            .expect("the Invoke API starts"),
        );
        World {
            pools,
            lambda,
            credentials: Credentials::parse(CREDENTIALS, Path::new("fuzz"))
                .expect("the fuzz credential parses"),
            cfg: ServerConfig {
                socket: root.join("kiln.sock"),
                max_connections: 1,
                request_timeout: Duration::from_secs(3600),
                idle_timeout: Duration::from_secs(3600),
            },
        }
    })
}

/// A client in memory: reads hand out the chunks in turn, then end of file; what the
/// server writes is kept.
struct Client {
    chunks: Vec<Vec<u8>>,
    next: usize,
    written: Arc<Mutex<Vec<u8>>>,
}

impl Read for Client {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let Some(chunk) = self.chunks.get_mut(self.next) else {
            return Ok(0);
        };
        let n = chunk.len().min(buf.len());
        buf[..n].copy_from_slice(&chunk[..n]);
        chunk.drain(..n);
        if chunk.is_empty() {
            self.next += 1;
        }
        Ok(n)
    }
}

impl Write for Client {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.written.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Conn for Client {
    fn set_read_timeout(&self, _: Option<Duration>) -> std::io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    kiln_fuzz::setup();
    let w = world();
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };

    // SigV4 verification of every request the stream holds, at the fixed time.
    let now = UNIX_EPOCH + Duration::from_secs(SIGNED_AT);
    let mut buf = stream;
    while let Ok(Parsed::Complete { request, consumed }) = parse_request(buf, MAX_BODY) {
        match sigv4::check(&request, Some(&w.credentials), now) {
            Ok(Signer::Verified(key)) => {
                let auth = request.header("authorization").unwrap_or_default();
                assert!(auth.contains(&format!("Credential={key}/")), "{auth}");
                kiln_fuzz::debug(|| format!("signed by {key}"));
            }
            Ok(Signer::Unverified(_)) => unreachable!("credentials were given"),
            Err(e) => kiln_fuzz::debug(|| format!("signature refused: {e}")),
        }
        if consumed == 0 {
            break;
        }
        buf = &buf[consumed.min(buf.len())..];
    }

    let written = Arc::new(Mutex::new(Vec::new()));
    let client = Client {
        chunks: chunks(stream, seed)
            .into_iter()
            .map(<[u8]>::to_vec)
            .collect(),
        next: 0,
        written: written.clone(),
    };
    {
        // The worker logs every failed invocation on stderr.
        let _quiet = kiln_fuzz::Quiet::new();
        serve_connection(client, w.cfg.clone(), w.pools.clone(), w.lambda.clone());
    }
    let answers = written.lock().unwrap();
    kiln_fuzz::debug(|| String::from_utf8_lossy(&answers).into_owned());
    for a in check_answers(&answers) {
        // Invoke API answers name their request.
        if a.header("x-amzn-errortype").is_some() || a.header("x-amz-executed-version").is_some() {
            assert!(a.header("x-amzn-requestid").is_some(), "{a:?}");
        }
    }
});
