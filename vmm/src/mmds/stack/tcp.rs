//! One TCP connection of the MMDS endpoint (port 80): the passive side of a handshake, one
//! HTTP request at a time, its response sent within the guest's window, and the close.
//!
//! Deliberately small: no timers (the guest's retransmissions drive recovery: a duplicate
//! ACK rewinds what was sent to what was acknowledged), no window scaling, no selective
//! acknowledgements, no out-of-order queue (a segment not at the expected sequence number
//! is answered with an ACK and dropped). Every buffer is bounded: the request by
//! [`MAX_REQUEST`] (our advertised window is what is left of it), the response by the
//! data store's limit, what is in flight by [`MAX_IN_FLIGHT`].

use super::frame::{Segment, ACK, FIN, PSH, RST, SYN};
use crate::metrics::METRICS;
use crate::mmds::http;
use crate::mmds::store::MmdsStore;
use kiln_http::{parse_request, Parsed};

/// Largest request (line, headers and body) a connection buffers.
pub const MAX_REQUEST: usize = 4096;
/// Largest request body (MMDS requests have none that matter).
const MAX_BODY: usize = 1024;
/// Most bytes sent and not yet acknowledged.
pub const MAX_IN_FLIGHT: u32 = 16 * 1024;
/// The MSS MMDS announces, and the largest segment it sends.
pub const OUR_MSS: u16 = 1460;
/// The MSS assumed when the guest's SYN has none (RFC 9293).
const DEFAULT_MSS: u16 = 536;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// SYN received, SYN-ACK (to be) sent.
    SynReceived,
    Established,
}

/// What a segment did to its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Keep,
    /// The connection is over (reset, or closed both ways); `ack` says whether a last ACK
    /// must still be sent for the guest's FIN.
    Remove {
        ack: bool,
    },
}

/// A segment for the caller to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Out {
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    pub mss: Option<u16>,
    /// The range of the response to carry.
    pub data: std::ops::Range<usize>,
}

#[derive(Debug)]
pub struct Conn {
    pub peer_port: u16,
    state: State,
    iss: u32,
    snd_una: u32,
    snd_nxt: u32,
    rcv_nxt: u32,
    peer_window: u16,
    mss: u16,
    request: Vec<u8>,
    /// The response being sent; its first byte has sequence number `resp_seq`.
    response: Vec<u8>,
    resp_seq: u32,
    /// Close once the response is sent (the guest asked, sent FIN, or sent garbage).
    closing: bool,
    fin_sent: bool,
    peer_fin: bool,
    need_ack: bool,
    need_synack: bool,
}

/// `a <= b` in sequence space (RFC 1982-style, for distances under 2^31).
fn seq_le(a: u32, b: u32) -> bool {
    b.wrapping_sub(a) < 1 << 31
}

impl Conn {
    /// A connection for the guest's SYN `syn`, answered with initial sequence `iss`.
    pub fn accept(syn: &Segment, iss: u32) -> Conn {
        METRICS.mmds.connections_created.inc();
        Conn {
            peer_port: syn.src_port,
            state: State::SynReceived,
            iss,
            snd_una: iss,
            snd_nxt: iss,
            rcv_nxt: syn.seq.wrapping_add(1),
            peer_window: syn.window,
            mss: syn.mss.unwrap_or(DEFAULT_MSS).clamp(64, OUR_MSS),
            request: Vec::new(),
            response: Vec::new(),
            resp_seq: iss.wrapping_add(1),
            closing: false,
            fin_sent: false,
            peer_fin: false,
            need_ack: false,
            need_synack: true,
        }
    }

    /// A retransmitted SYN of this very connection.
    pub fn is_same_syn(&self, syn: &Segment) -> bool {
        self.state == State::SynReceived && syn.seq.wrapping_add(1) == self.rcv_nxt
    }

    /// Our receive window: what is left of the request buffer.
    fn window(&self) -> u16 {
        u16::try_from(MAX_REQUEST.saturating_sub(self.request.len())).unwrap_or(u16::MAX)
    }

    fn resp_end(&self) -> u32 {
        let len = u32::try_from(self.response.len()).unwrap_or(u32::MAX);
        self.resp_seq.wrapping_add(len)
    }

    /// Takes one segment of this connection from the guest.
    pub fn input(&mut self, seg: &Segment, store: &mut MmdsStore) -> Outcome {
        if seg.has(RST) {
            // Only a reset inside what we expect counts (RFC 5961's simple form).
            if seg.seq == self.rcv_nxt {
                return Outcome::Remove { ack: false };
            }
            METRICS.mmds.rx_accepted_unusual.inc();
            return Outcome::Keep;
        }
        if seg.has(SYN) {
            // A SYN that is not a retransmission: the caller replaced us before.
            self.need_synack = self.state == State::SynReceived;
            return Outcome::Keep;
        }
        if !seg.has(ACK) {
            METRICS.mmds.rx_accepted_unusual.inc();
            return Outcome::Keep;
        }
        if !self.take_ack(seg) {
            return Outcome::Keep;
        }
        self.peer_window = seg.window;
        if seg.seq != self.rcv_nxt {
            if seg.seq_len() > 0 {
                // Out of order or repeated: say what we expect.
                METRICS.mmds.rx_accepted_unusual.inc();
                self.need_ack = true;
            }
            return Outcome::Keep;
        }
        if !seg.payload.is_empty() {
            self.need_ack = true;
            if self.peer_fin || self.closing {
                // After the end: not taken.
                METRICS.mmds.rx_accepted_unusual.inc();
                return Outcome::Keep;
            }
            // What fits the window we advertised is taken; the rest is the guest's to send
            // again (and a full buffer with no whole request in it is refused below).
            let room = MAX_REQUEST.saturating_sub(self.request.len());
            let taken = seg
                .payload
                .get(..room.min(seg.payload.len()))
                .unwrap_or(&[]);
            if taken.len() < seg.payload.len() {
                METRICS.mmds.rx_accepted_unusual.inc();
            }
            self.request.extend_from_slice(taken);
            let len = u32::try_from(taken.len()).unwrap_or(u32::MAX);
            self.rcv_nxt = self.rcv_nxt.wrapping_add(len);
            if taken.len() < seg.payload.len() {
                self.serve(store);
                return Outcome::Keep;
            }
        }
        if seg.has(FIN) && !self.peer_fin {
            self.peer_fin = true;
            self.closing = true;
            self.need_ack = true;
            self.rcv_nxt = self.rcv_nxt.wrapping_add(1);
        }
        self.serve(store);
        if self.fin_sent && self.snd_una == self.snd_nxt && self.peer_fin {
            return Outcome::Remove { ack: self.need_ack };
        }
        Outcome::Keep
    }

    /// Applies the acknowledgement of `seg`; false when it acknowledges what was never
    /// sent (answered with an ACK, the segment dropped).
    fn take_ack(&mut self, seg: &Segment) -> bool {
        let ack = seg.ack;
        if !seq_le(ack, self.snd_nxt) || !seq_le(self.snd_una, ack) {
            METRICS.mmds.rx_accepted_unusual.inc();
            self.need_ack = true;
            return false;
        }
        if self.state == State::SynReceived {
            if ack != self.iss.wrapping_add(1) {
                METRICS.mmds.rx_accepted_unusual.inc();
                return false;
            }
            self.state = State::Established;
            self.need_synack = false;
        }
        if ack == self.snd_una && self.snd_nxt != self.snd_una && seg.seq_len() == 0 {
            // A duplicate ACK while data is out: send again from what was acknowledged.
            self.snd_nxt = self.snd_una;
            if self.fin_sent && self.snd_nxt != self.resp_end().wrapping_add(1) {
                self.fin_sent = false;
            }
        }
        self.snd_una = ack;
        if self.snd_una == self.resp_end() || (self.fin_sent && self.snd_una == self.snd_nxt) {
            // The whole response was acknowledged.
            self.resp_seq = self.resp_end();
            self.response.clear();
        }
        true
    }

    /// Starts the response to the next complete request, when none is being sent.
    fn serve(&mut self, store: &mut MmdsStore) {
        if !self.response.is_empty() || self.fin_sent || self.request.is_empty() {
            return;
        }
        let (bytes, consumed, close) = match parse_request(&self.request, MAX_BODY) {
            Ok(Parsed::Complete { request, consumed }) => {
                let close = !request.keep_alive;
                (http::respond(store, &request, close), consumed, close)
            }
            Ok(Parsed::Incomplete { .. }) if self.request.len() < MAX_REQUEST && !self.peer_fin => {
                return
            }
            Ok(Parsed::Incomplete { .. }) => (
                http::respond_malformed(
                    400,
                    &format!("the request is incomplete or larger than {MAX_REQUEST} bytes"),
                ),
                self.request.len(),
                true,
            ),
            Err(e) => (
                http::respond_malformed(e.status(), &e.to_string()),
                self.request.len(),
                true,
            ),
        };
        self.request.drain(..consumed.min(self.request.len()));
        self.closing |= close;
        self.resp_seq = self.snd_nxt;
        self.response = bytes;
    }

    /// The next segment to send, if any: the SYN-ACK, data within the guest's window, our
    /// FIN once the response is out and the connection closes, or a bare ACK.
    pub fn output(&mut self) -> Option<Out> {
        let window = self.window();
        if self.need_synack {
            self.need_synack = false;
            self.snd_nxt = self.iss.wrapping_add(1);
            return Some(Out {
                seq: self.iss,
                ack: self.rcv_nxt,
                flags: SYN | ACK,
                window,
                mss: Some(OUR_MSS),
                data: 0..0,
            });
        }
        if self.state != State::Established {
            return None;
        }
        let in_flight = self.snd_nxt.wrapping_sub(self.snd_una);
        let allowed = u32::from(self.peer_window)
            .min(MAX_IN_FLIGHT)
            .saturating_sub(in_flight);
        let unsent = self.resp_end().wrapping_sub(self.snd_nxt);
        if !self.fin_sent && seq_le(self.snd_nxt, self.resp_end()) && unsent > 0 && allowed > 0 {
            let n = unsent.min(allowed).min(u32::from(self.mss));
            let start = usize::try_from(self.snd_nxt.wrapping_sub(self.resp_seq)).ok()?;
            let end = start.checked_add(usize::try_from(n).ok()?)?;
            let seq = self.snd_nxt;
            self.snd_nxt = self.snd_nxt.wrapping_add(n);
            self.need_ack = false;
            return Some(Out {
                seq,
                ack: self.rcv_nxt,
                flags: ACK | PSH,
                window,
                mss: None,
                data: start..end,
            });
        }
        if self.closing && !self.fin_sent && unsent == 0 && self.response_done_or_sent() {
            self.fin_sent = true;
            let seq = self.snd_nxt;
            self.snd_nxt = self.snd_nxt.wrapping_add(1);
            self.need_ack = false;
            return Some(Out {
                seq,
                ack: self.rcv_nxt,
                flags: FIN | ACK,
                window,
                mss: None,
                data: 0..0,
            });
        }
        if self.need_ack {
            self.need_ack = false;
            return Some(Out {
                seq: self.snd_nxt,
                ack: self.rcv_nxt,
                flags: ACK,
                window,
                mss: None,
                data: 0..0,
            });
        }
        None
    }

    /// Nothing of the response is left to send, and no request waits to be answered.
    fn response_done_or_sent(&self) -> bool {
        self.snd_nxt == self.resp_end() && (self.request.is_empty() || self.peer_fin)
    }

    /// Whether [`Conn::output`] has something to send.
    pub fn wants_output(&self) -> bool {
        self.need_synack
            || self.need_ack
            || (self.state == State::Established
                && (self.resp_end() != self.snd_nxt || (self.closing && !self.fin_sent)))
    }

    /// The bytes of the response in `range` (from [`Out::data`]).
    pub fn data(&self, range: std::ops::Range<usize>) -> &[u8] {
        self.response.get(range).unwrap_or(&[])
    }

    /// Sequence numbers for a reset of this connection (evicted).
    pub fn reset_seq(&self) -> (u32, u32) {
        (self.snd_nxt, self.rcv_nxt)
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        METRICS.mmds.connections_destroyed.inc();
    }
}
