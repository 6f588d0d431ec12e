//! The hand-off between the agent, which gets one invocation at a time from the host, and
//! the runtime, which asks for invocations and answers them on the Runtime API: one state
//! under one lock, and a condition variable for every change.
//!
//! An invocation is `pending` until the runtime's `GET /next` takes it; it is then `current`
//! until the runtime posts its response or error (the `outcome`). The runtime's process
//! ending (`exited`, recorded by the reaper) and an init error end the wait too.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// An invocation as `GET /next` hands it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Next {
    pub request_id: String,
    pub event: Vec<u8>,
    /// `Lambda-Runtime-Deadline-Ms`: milliseconds since the Unix epoch.
    pub deadline_ms: u128,
    pub function_arn: String,
    pub trace_id: Option<String>,
    pub client_context: Option<String>,
    pub cognito_identity: Option<String>,
}

/// What the runtime answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Response(Vec<u8>),
    /// `POST /error`: the error object, and `Lambda-Runtime-Function-Error-Type`.
    Error {
        body: Vec<u8>,
        error_type: Option<String>,
    },
    /// A response over the limit (refused with 413).
    TooLarge {
        len: usize,
    },
}

/// The shared state.
#[derive(Debug, Default)]
pub struct State {
    pub pending: Option<Next>,
    pub current: Option<String>,
    /// The outcome of the invocation of this request id.
    pub outcome: Option<(String, Outcome)>,
    /// The runtime has asked for an invocation since it started: it is initialised.
    pub ready: bool,
    /// `POST /init/error`: the error type header and the body.
    pub init_error: Option<(Option<String>, Vec<u8>)>,
    /// The running runtime's process id (the process group it leads).
    pub pid: Option<i32>,
    /// How the runtime's process ended, once it has.
    pub exited: Option<String>,
}

/// Why the runtime's call was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The request id is not the invocation in progress (400 `InvalidRequestID`).
    UnknownRequest,
    /// The call does not fit the invocation's state (403 `InvalidStateTransition`).
    InvalidState(&'static str),
}

/// The state and its condition variable.
#[derive(Debug, Default)]
pub struct Exchange {
    state: Mutex<State>,
    changed: Condvar,
}

impl Exchange {
    /// The state (taken back from a poisoned lock: every field is valid between statements).
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes every waiter.
    pub fn notify(&self) {
        self.changed.notify_all();
    }

    /// Waits for a change, at most `timeout`.
    pub fn wait<'a>(
        &self,
        guard: MutexGuard<'a, State>,
        timeout: Duration,
    ) -> MutexGuard<'a, State> {
        self.changed
            .wait_timeout(guard, timeout)
            .map(|(g, _)| g)
            .unwrap_or_else(|p| p.into_inner().0)
    }

    /// `GET /next`: blocks until there is an invocation, and hands it out.
    pub fn next(&self) -> Result<Next, Refusal> {
        let mut st = self.lock();
        if st.current.is_some() {
            return Err(Refusal::InvalidState(
                "the runtime asked for the next invocation before answering the current one",
            ));
        }
        if !st.ready {
            st.ready = true;
            self.notify();
        }
        loop {
            if let Some(next) = st.pending.take() {
                st.current = Some(next.request_id.clone());
                return Ok(next);
            }
            st = self.wait(st, Duration::from_secs(3600));
        }
    }

    /// `POST /response` or `/error` for `request_id`.
    pub fn answer(&self, request_id: &str, outcome: Outcome) -> Result<(), Refusal> {
        let mut st = self.lock();
        if st.current.as_deref() != Some(request_id) {
            return Err(Refusal::UnknownRequest);
        }
        if st.outcome.is_some() {
            return Err(Refusal::InvalidState(
                "the invocation has already been answered",
            ));
        }
        st.outcome = Some((request_id.to_string(), outcome));
        self.notify();
        Ok(())
    }

    /// `POST /init/error`.
    pub fn init_error(&self, error_type: Option<String>, body: Vec<u8>) {
        self.lock().init_error = Some((error_type, body));
        self.notify();
    }

    /// The id of the invocation in progress, if the runtime has it.
    pub fn current(&self) -> Option<String> {
        self.lock().current.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn next(id: &str) -> Next {
        Next {
            request_id: id.into(),
            event: b"{}".to_vec(),
            deadline_ms: 0,
            function_arn: String::new(),
            trace_id: None,
            client_context: None,
            cognito_identity: None,
        }
    }

    #[test]
    fn an_invocation_is_taken_then_answered_once() {
        let x = Arc::new(Exchange::default());
        let x2 = x.clone();
        let runtime = std::thread::spawn(move || x2.next());
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            x.lock().ready,
            "asking for /next marks the runtime initialised"
        );
        x.lock().pending = Some(next("r-1"));
        x.notify();
        assert_eq!(runtime.join().unwrap().unwrap().request_id, "r-1");
        assert_eq!(x.current().as_deref(), Some("r-1"));
        assert_eq!(
            x.next(),
            Err(Refusal::InvalidState(
                "the runtime asked for the next invocation before answering the current one"
            ))
        );
        assert_eq!(
            x.answer("r-2", Outcome::Response(Vec::new())),
            Err(Refusal::UnknownRequest)
        );
        assert_eq!(x.answer("r-1", Outcome::Response(b"ok".to_vec())), Ok(()));
        assert!(matches!(
            x.answer("r-1", Outcome::Response(Vec::new())),
            Err(Refusal::InvalidState(_))
        ));
        assert_eq!(
            x.lock().outcome,
            Some(("r-1".into(), Outcome::Response(b"ok".to_vec())))
        );
    }
}
