//! A Lambda function in the guest: the agent serves Lambda's Runtime API ([`api`]) on
//! loopback and runs the function's runtime ([`config`]: its `bootstrap`, or the Python
//! runtime interface client) against it, so that an unmodified `provided.al2023` bootstrap or
//! a standard runtime interface client runs as the function. Invocations still come from the
//! host over vsock with the invocation protocol: [`LambdaRuntime`] is the agent's handler.
//!
//! **Init.** [`LambdaRuntime::start`] binds the Runtime API, starts the runtime
//! ([`process`]) and waits (at most [`INIT_LIMIT`], Lambda's init limit) until it asks for
//! its first invocation, fails its init, or exits; the agent says `Hello` after that, so a
//! cold start includes the function's init, as on Lambda.
//!
//! **Invoke.** The host's event (with the `Context` frame's request id, deadline and ARN)
//! waits in the [`exchange`] until the runtime takes it; the runtime's response, or its error
//! object, is the answer. What the runtime printed meanwhile goes to the host as the
//! invocation's log. A runtime that fails its init, exits, or outlives the deadline (it is
//! killed) fails the invocation with the error object Lambda gives for it
//! (`Runtime.ExitError`, `Sandbox.Timedout`, the runtime's init error), and is started anew
//! for the next invocation (Lambda's "suppressed init"). Errors reach the host as
//! `ErrorCode::Function` with the JSON error object as message; the VM stays warm.

pub mod api;
pub mod config;
pub mod exchange;
pub mod process;

use crate::agent::{Context, Failure, Handled, Handler};
use config::{LambdaConfig, Layout};
use exchange::{Exchange, Next, Outcome};
use kiln_protocol::ErrorCode;
use process::Runtime;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long the runtime's init may take before the agent says `Hello` anyway (Lambda's
/// limit on the init phase).
pub const INIT_LIMIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum LambdaError {
    #[error("cannot listen on {addr} for the Runtime API: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot serve the Runtime API: {0}")]
    Serve(std::io::Error),
}

/// How the runtime's init went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitState {
    /// It asked for its first invocation.
    Ready,
    /// It posted an init error, exited, or could not be started: the reason.
    Failed(String),
    /// It was still initialising at the deadline.
    Slow,
}

/// The agent's handler for a Lambda function.
pub struct LambdaRuntime {
    cfg: LambdaConfig,
    layout: Layout,
    /// `host:port` the Runtime API listens on.
    api: String,
    exchange: Arc<Exchange>,
    runtime: Option<Runtime>,
    /// Why the runtime could not be started, for the next invocation.
    start_error: Option<String>,
}

impl LambdaRuntime {
    /// Serves the Runtime API on `layout.runtime_api`, starts the runtime and waits for its
    /// init (see the module's text). One per process: the process's one reaper thread
    /// records the exits of this runtime's processes.
    pub fn start(
        cfg: LambdaConfig,
        layout: Layout,
    ) -> Result<(LambdaRuntime, InitState), LambdaError> {
        let listener =
            TcpListener::bind(&layout.runtime_api).map_err(|source| LambdaError::Listen {
                addr: layout.runtime_api.clone(),
                source,
            })?;
        let api = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| layout.runtime_api.clone());
        let exchange = Arc::new(Exchange::default());
        api::start(listener, exchange.clone()).map_err(LambdaError::Serve)?;
        let mut me = LambdaRuntime {
            cfg,
            layout,
            api,
            exchange,
            runtime: None,
            start_error: None,
        };
        me.launch();
        let init = me.wait_init(Instant::now() + INIT_LIMIT);
        Ok((me, init))
    }

    /// The Runtime API's address (`AWS_LAMBDA_RUNTIME_API`).
    pub fn api_address(&self) -> &str {
        &self.api
    }

    /// Starts the runtime afresh (its state forgotten).
    fn launch(&mut self) {
        if let Some(old) = self.runtime.take() {
            old.kill();
        }
        {
            let mut st = self.exchange.lock();
            st.ready = false;
            st.init_error = None;
            st.exited = None;
            st.pending = None;
            st.current = None;
            st.outcome = None;
        }
        self.start_error = None;
        let env = config::environment(&self.cfg, &self.layout, &self.api);
        let started = config::bootstrap(&self.cfg, &self.layout).and_then(|argv| {
            Runtime::spawn(&argv, &env, &self.layout.task_root, &self.exchange)
                .map_err(|e| format!("cannot start the runtime {}: {e}", argv.join(" ")))
        });
        match started {
            Ok(r) => self.runtime = Some(r),
            Err(e) => self.start_error = Some(e),
        }
    }

    /// Waits until the runtime is ready, failed, or `until`.
    fn wait_init(&self, until: Instant) -> InitState {
        if let Some(e) = &self.start_error {
            return InitState::Failed(e.clone());
        }
        let mut st = self.exchange.lock();
        loop {
            if st.ready {
                return InitState::Ready;
            }
            if let Some((t, body)) = &st.init_error {
                return InitState::Failed(format!(
                    "init error {}: {}",
                    t.as_deref().unwrap_or(""),
                    String::from_utf8_lossy(body)
                ));
            }
            if let Some(e) = &st.exited {
                return InitState::Failed(format!("the runtime exited: {e}"));
            }
            let now = Instant::now();
            if now >= until {
                return InitState::Slow;
            }
            st = self.exchange.wait(st, until - now);
        }
    }

    /// Whether the runtime must be started again before the next invocation.
    fn needs_launch(&self) -> bool {
        let st = self.exchange.lock();
        self.runtime.is_none() || st.exited.is_some() || st.init_error.is_some()
    }

    fn fail(object: Vec<u8>) -> Result<Vec<u8>, Failure> {
        Err(Failure {
            code: ErrorCode::Function,
            message: String::from_utf8_lossy(&object).into_owned(),
        })
    }

    /// Runs one invocation; the runtime's logs are taken by the caller.
    fn run(&mut self, ctx: &Context, event: &[u8]) -> Result<Vec<u8>, Failure> {
        let request_id = ctx
            .request_id
            .clone()
            .unwrap_or_else(|| format!("kiln-{}", ctx.received.elapsed().as_nanos()));
        let timeout = ctx
            .remaining
            .unwrap_or(Duration::from_millis(self.cfg.timeout_ms));
        let deadline = ctx.received + timeout;
        let epoch_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis()
            + deadline
                .saturating_duration_since(Instant::now())
                .as_millis();
        let error =
            |t: &str, m: String| api::error_body(t, &format!("RequestId: {request_id} Error: {m}"));
        if self.needs_launch() {
            self.launch();
        }
        if let Some(e) = self.start_error.clone() {
            return Self::fail(error("Runtime.InvalidEntrypoint", e));
        }
        let next = Next {
            request_id: request_id.clone(),
            event: event.to_vec(),
            deadline_ms: epoch_ms,
            function_arn: ctx.function_arn.clone().unwrap_or_else(|| {
                format!(
                    "arn:aws:lambda:us-east-1:000000000000:function:{}",
                    self.cfg.name
                )
            }),
            trace_id: ctx.trace_id.clone(),
            client_context: ctx.client_context.clone(),
            cognito_identity: ctx.cognito_identity.clone(),
        };
        let mut relaunched = false;
        let mut st = self.exchange.lock();
        st.pending = Some(next.clone());
        self.exchange.notify();
        let result = loop {
            if let Some((id, outcome)) = st.outcome.take() {
                if id == request_id {
                    break Ok(outcome);
                }
            }
            if let Some((t, body)) = st.init_error.clone() {
                break Err(reported(&body, t.as_deref().unwrap_or("Runtime.Unknown")));
            }
            if let Some(e) = st.exited.clone() {
                // A runtime that had initialised and ended before it took this invocation
                // ended after the previous one: this invocation gets a fresh runtime (once).
                let taken = st.current.as_deref() == Some(request_id.as_str());
                if st.ready && !taken && !relaunched {
                    relaunched = true;
                    drop(st);
                    self.launch();
                    if let Some(e) = self.start_error.clone() {
                        return Self::fail(error("Runtime.InvalidEntrypoint", e));
                    }
                    st = self.exchange.lock();
                    st.pending = Some(next.clone());
                    self.exchange.notify();
                    continue;
                }
                break Err(error(
                    "Runtime.ExitError",
                    format!("Runtime exited with error: {e}"),
                ));
            }
            let now = Instant::now();
            if now >= deadline {
                break Err(error(
                    "Sandbox.Timedout",
                    format!("Task timed out after {:.2} seconds", timeout.as_secs_f64()),
                ));
            }
            st = self.exchange.wait(st, deadline - now);
        };
        st.pending = None;
        st.current = None;
        st.outcome = None;
        drop(st);
        match result {
            Ok(Outcome::Response(body)) => Ok(body),
            Ok(Outcome::Error { body, error_type }) => Self::fail(reported(
                &body,
                error_type.as_deref().unwrap_or("Unhandled"),
            )),
            Ok(Outcome::TooLarge { len }) => {
                // The runtime's post was refused: its state is unknown (awslambdaric ends).
                self.retire();
                Self::fail(error(
                    "Function.ResponseSizeTooLarge",
                    format!(
                        "Response payload size ({len} bytes) exceeded maximum allowed payload size ({} bytes).",
                        api::MAX_PAYLOAD
                    ),
                ))
            }
            Err(object) => {
                // Init failed, the runtime exited or timed out.
                self.retire();
                Self::fail(object)
            }
        }
    }

    /// Kills the runtime: the next invocation starts a fresh one.
    fn retire(&mut self) {
        if let Some(r) = &self.runtime {
            r.kill();
        }
        self.exchange
            .lock()
            .exited
            .get_or_insert_with(|| "killed".into());
    }
}

/// A runtime's error object: passed on if it is a JSON object, else wrapped in one.
fn reported(body: &[u8], error_type: &str) -> Vec<u8> {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(_)) => body.to_vec(),
        _ => api::error_body(error_type, &String::from_utf8_lossy(body)),
    }
}

impl Handler for LambdaRuntime {
    fn handle(&mut self, ctx: &Context, event: &[u8]) -> Handled {
        let result = self.run(ctx, event);
        let logs = self
            .runtime
            .as_ref()
            .map(Runtime::take_logs)
            .unwrap_or_default();
        Handled { result, logs }
    }
}

impl Drop for LambdaRuntime {
    fn drop(&mut self) {
        if let Some(r) = self.runtime.take() {
            r.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_objects_pass_through_or_are_wrapped() {
        let object = br#"{"errorMessage":"m","errorType":"ValueError","stackTrace":[]}"#;
        assert_eq!(reported(object, "X"), object);
        let wrapped: serde_json::Value =
            serde_json::from_slice(&reported(b"plain text", "MyError")).unwrap();
        assert_eq!(wrapped["errorType"], "MyError");
        assert_eq!(wrapped["errorMessage"], "plain text");
        let wrapped: serde_json::Value =
            serde_json::from_slice(&reported(b"[1]", "Unhandled")).unwrap();
        assert_eq!(wrapped["errorMessage"], "[1]");
    }
}
