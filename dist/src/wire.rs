//! The bytes on a data connection between two ranks, and reads and writes that never outlive a
//! deadline.
//!
//! Each direction of a connection carries frames, each starting with a kind byte:
//! - `Begin` opens one phase of a collective and says what the sender is doing (operation,
//!   phase, element type, sequence number, lengths, root). The receiver compares it with what
//!   it is doing itself, so ranks out of step get an error instead of a garbled sum.
//! - `Data` carries up to [`SEGMENT_BYTES`] of payload (`u32` length, then the bytes).
//! - `Abort` says the sender gave up, and which rank it blames; it is only ever written at a
//!   frame boundary, so the receiver reads it where it expected `Begin` or `Data`.
//!
//! Numbers are little-endian; payloads are the elements in memory order (little-endian hosts).

use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::element::name_of_code;
use crate::error::Op;

/// The largest `Data` frame. Senders check for an abort between frames, so this bounds how
/// long a sender runs on after its rank gave up.
pub(crate) const SEGMENT_BYTES: usize = 1 << 20;

/// An `Abort` frame's reason is cut to this many bytes.
const MAX_REASON_BYTES: usize = 4096;

const KIND_BEGIN: u8 = 1;
const KIND_DATA: u8 = 2;
const KIND_ABORT: u8 = 3;

/// What a rank announces to each peer at the start of a phase of a collective.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Begin {
    pub op: Op,
    /// Phase within the operation (all_reduce: 0 reduce-scatter, 1 all-gather).
    pub phase: u8,
    /// Element type code ([`crate::Element::CODE`]; 0 for bytes).
    pub dtype: u8,
    /// How many collectives this communicator ran before this one.
    pub seq: u64,
    /// Elements this sender sends to this receiver in this phase.
    pub count: u64,
    /// The caller's whole buffer length, in elements.
    pub total: u64,
    /// The root of a broadcast; 0 otherwise.
    pub root: u32,
}

const BEGIN_BYTES: usize = 1 + 1 + 1 + 8 + 8 + 8 + 4;

impl Begin {
    fn encode(&self) -> [u8; BEGIN_BYTES] {
        let mut b = [0u8; BEGIN_BYTES];
        b[0] = self.op.code();
        b[1] = self.phase;
        b[2] = self.dtype;
        b[3..11].copy_from_slice(&self.seq.to_le_bytes());
        b[11..19].copy_from_slice(&self.count.to_le_bytes());
        b[19..27].copy_from_slice(&self.total.to_le_bytes());
        b[27..31].copy_from_slice(&self.root.to_le_bytes());
        b
    }

    fn decode(b: &[u8; BEGIN_BYTES]) -> Result<Begin, String> {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        Ok(Begin {
            op: Op::from_code(b[0]).ok_or_else(|| format!("unknown operation code {}", b[0]))?,
            phase: b[1],
            dtype: b[2],
            seq: u64_at(3),
            count: u64_at(11),
            total: u64_at(19),
            root: u32::from_le_bytes(b[27..31].try_into().expect("4 bytes")),
        })
    }
}

impl fmt::Display for Begin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} #{} (phase {}, {} × {}, buffer length {}",
            self.op,
            self.seq,
            self.phase,
            self.count,
            name_of_code(self.dtype),
            self.total
        )?;
        if self.op == Op::Broadcast {
            write!(f, ", root {}", self.root)?;
        }
        f.write_str(")")
    }
}

/// Why a read or write on a link failed. The caller adds the operation and the peer's rank.
#[derive(Debug)]
pub(crate) enum LinkError {
    /// End of stream, reset or another socket error: the peer is gone.
    Closed(String),
    /// The deadline passed first.
    TimedOut,
    /// The peer sent an `Abort` frame.
    Aborted { culprit: usize, reason: String },
    /// The peer sent something that is not a frame we expect.
    Protocol(String),
}

/// The reading half of a connection. Tracks how much of the current `Data` frame is unread, so
/// a reader may consume a frame in several pieces.
pub(crate) struct LinkReader {
    stream: TcpStream,
    unread_in_frame: usize,
}

impl LinkReader {
    pub fn new(stream: TcpStream) -> LinkReader {
        LinkReader {
            stream,
            unread_in_frame: 0,
        }
    }

    /// Reads the next `Begin` frame.
    pub fn read_begin(&mut self, deadline: Instant) -> Result<Begin, LinkError> {
        if self.unread_in_frame != 0 {
            return Err(LinkError::Protocol(format!(
                "{} bytes of data left over where a new phase should begin",
                self.unread_in_frame
            )));
        }
        match self.read_kind(deadline)? {
            KIND_BEGIN => {
                let mut b = [0u8; BEGIN_BYTES];
                read_full(&mut self.stream, &mut b, deadline)?;
                Begin::decode(&b).map_err(LinkError::Protocol)
            }
            KIND_DATA => Err(LinkError::Protocol(
                "data where a new phase should begin".into(),
            )),
            other => Err(unknown_kind(other)),
        }
    }

    /// Fills `buf` from the peer's `Data` frames.
    pub fn read_data(&mut self, mut buf: &mut [u8], deadline: Instant) -> Result<(), LinkError> {
        while !buf.is_empty() {
            if self.unread_in_frame == 0 {
                match self.read_kind(deadline)? {
                    KIND_DATA => {
                        let mut len = [0u8; 4];
                        read_full(&mut self.stream, &mut len, deadline)?;
                        self.unread_in_frame = u32::from_le_bytes(len) as usize;
                        if self.unread_in_frame == 0 || self.unread_in_frame > SEGMENT_BYTES {
                            return Err(LinkError::Protocol(format!(
                                "data frame of {} bytes",
                                self.unread_in_frame
                            )));
                        }
                    }
                    KIND_BEGIN => {
                        return Err(LinkError::Protocol(
                            "a new phase began where data was due (it sent fewer bytes than \
                             this rank expects)"
                                .into(),
                        ));
                    }
                    other => return Err(unknown_kind(other)),
                }
            }
            let n = self.unread_in_frame.min(buf.len());
            let (now, rest) = buf.split_at_mut(n);
            read_full(&mut self.stream, now, deadline)?;
            self.unread_in_frame -= n;
            buf = rest;
        }
        Ok(())
    }

    /// Reads a frame's kind byte; an `Abort` frame is read whole and returned as an error.
    fn read_kind(&mut self, deadline: Instant) -> Result<u8, LinkError> {
        let mut kind = [0u8; 1];
        read_full(&mut self.stream, &mut kind, deadline)?;
        if kind[0] != KIND_ABORT {
            return Ok(kind[0]);
        }
        let mut head = [0u8; 8];
        read_full(&mut self.stream, &mut head, deadline)?;
        let culprit = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
        let len = (u32::from_le_bytes(head[4..].try_into().expect("4 bytes")) as usize)
            .min(MAX_REASON_BYTES);
        let mut reason = vec![0u8; len];
        read_full(&mut self.stream, &mut reason, deadline)?;
        Err(LinkError::Aborted {
            culprit,
            reason: String::from_utf8_lossy(&reason).into_owned(),
        })
    }
}

fn unknown_kind(kind: u8) -> LinkError {
    LinkError::Protocol(format!("unknown frame kind {kind}"))
}

/// The writing half of a connection.
pub(crate) struct LinkWriter {
    stream: TcpStream,
}

impl LinkWriter {
    pub fn new(stream: TcpStream) -> LinkWriter {
        LinkWriter { stream }
    }

    pub fn write_begin(&mut self, begin: &Begin, deadline: Instant) -> Result<(), LinkError> {
        let mut frame = [0u8; 1 + BEGIN_BYTES];
        frame[0] = KIND_BEGIN;
        frame[1..].copy_from_slice(&begin.encode());
        write_full(&mut self.stream, &[&frame], deadline)
    }

    /// Writes `payload` as `Data` frames. Stops early, at a frame boundary, once `abort` is set,
    /// and then returns `Ok(false)`.
    pub fn write_data(
        &mut self,
        payload: &[u8],
        deadline: Instant,
        abort: &AtomicBool,
    ) -> Result<bool, LinkError> {
        for segment in payload.chunks(SEGMENT_BYTES) {
            if abort.load(Ordering::Acquire) {
                return Ok(false);
            }
            let mut head = [0u8; 5];
            head[0] = KIND_DATA;
            head[1..].copy_from_slice(&(segment.len() as u32).to_le_bytes());
            write_full(&mut self.stream, &[&head, segment], deadline)?;
        }
        Ok(true)
    }

    /// Tells the peer this rank gave up, blaming `culprit`.
    pub fn write_abort(
        &mut self,
        culprit: usize,
        reason: &str,
        deadline: Instant,
    ) -> Result<(), LinkError> {
        let mut reason = reason.as_bytes();
        if reason.len() > MAX_REASON_BYTES {
            reason = &reason[..MAX_REASON_BYTES];
        }
        let mut head = [0u8; 9];
        head[0] = KIND_ABORT;
        head[1..5].copy_from_slice(&(culprit as u32).to_le_bytes());
        head[5..].copy_from_slice(&(reason.len() as u32).to_le_bytes());
        write_full(&mut self.stream, &[&head, reason], deadline)
    }
}

/// Time left before `deadline`, if any.
pub(crate) fn time_left(deadline: Instant) -> Option<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
}

fn is_retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Reads exactly `buf.len()` bytes before `deadline`. Each `read` gets the time still left as
/// its socket timeout, so a trickle of bytes cannot stretch the call past the deadline.
pub(crate) fn read_full(
    stream: &mut TcpStream,
    mut buf: &mut [u8],
    deadline: Instant,
) -> Result<(), LinkError> {
    while !buf.is_empty() {
        let left = time_left(deadline).ok_or(LinkError::TimedOut)?;
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| LinkError::Closed(e.to_string()))?;
        match stream.read(buf) {
            Ok(0) => return Err(LinkError::Closed("end of stream".into())),
            Ok(n) => buf = &mut buf[n..],
            Err(e) if is_retry(&e) => {}
            Err(e) => return Err(LinkError::Closed(e.to_string())),
        }
    }
    Ok(())
}

/// Writes every byte of `parts`, in order, before `deadline`. Plain `write` calls, not
/// `writev`: std sends with `MSG_NOSIGNAL`, so a closed peer is an error, never a SIGPIPE.
pub(crate) fn write_full(
    stream: &mut TcpStream,
    parts: &[&[u8]],
    deadline: Instant,
) -> Result<(), LinkError> {
    for part in parts {
        let mut part: &[u8] = part;
        while !part.is_empty() {
            let left = time_left(deadline).ok_or(LinkError::TimedOut)?;
            stream
                .set_write_timeout(Some(left))
                .map_err(|e| LinkError::Closed(e.to_string()))?;
            match stream.write(part) {
                Ok(0) => return Err(LinkError::Closed("connection accepts no more bytes".into())),
                Ok(n) => part = &part[n..],
                Err(e) if is_retry(&e) => {}
                Err(e) => return Err(LinkError::Closed(e.to_string())),
            }
        }
    }
    Ok(())
}
