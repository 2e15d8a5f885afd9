//! One phase of a collective: every rank sends one payload to some peers while it reads what it
//! expects from others.
//!
//! Sends run on one scoped thread per peer, so a rank never waits for its own sends to drain
//! before it reads (two ranks sending each other more than a socket buffer would otherwise
//! deadlock). Reads run on the calling thread, in the order the collective chooses; that order
//! is what makes sums independent of timing.
//!
//! When the reading side fails, the senders are told to stop at their next frame boundary and
//! get [`ABORT_GRACE`] to get there; a sender still stuck after that (its peer is not reading) has
//! its connection shut down, which wakes it. Either way the phase returns by its deadline plus
//! at most the grace, and the grace itself never runs past the deadline.

use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::error::{DistError, Op};
use crate::wire::{Begin, LinkError, LinkReader, LinkWriter};

/// How long senders get to reach a frame boundary after their rank gave up.
const ABORT_GRACE: Duration = Duration::from_secs(1);

/// One connection, split in the halves a phase uses at once.
pub(crate) struct Link {
    /// The peer's rank in the whole job. Links are indexed by rank within their communicator
    /// (a group's differs from the job's, see [`super::TcpComm::subgroup`]); errors name this
    /// one, so a log points at the same process whichever communicator failed.
    pub world_rank: usize,
    pub reader: LinkReader,
    pub writer: LinkWriter,
    /// A third handle on the socket, to shut it down while the others are in use.
    pub control: TcpStream,
    /// A write stopped mid-frame: nothing more may be written on this link.
    pub write_broken: bool,
}

/// What this rank sends one peer in a phase.
pub(crate) struct Outgoing<'a> {
    pub peer: usize,
    pub begin: Begin,
    pub payload: &'a [u8],
}

/// The reading side of a phase, handed to the collective's receive step.
pub(crate) struct Incoming<'a> {
    readers: Vec<Option<&'a mut LinkReader>>,
    /// Each link's peer, as a rank of the whole job.
    world_ranks: Vec<usize>,
    op: Op,
    deadline: Instant,
    timeout: Duration,
}

impl Incoming<'_> {
    /// Reads `peer`'s `Begin` and checks it is `expected`.
    pub fn begin(&mut self, peer: usize, expected: &Begin) -> Result<(), DistError> {
        let got = self.read_begin(peer)?;
        if got != *expected {
            return Err(self.desync(peer, &got, expected));
        }
        Ok(())
    }

    /// Reads `peer`'s `Begin`, checks everything but the count (`all_gather_bytes`, where each
    /// rank sends its own length) and returns the count.
    pub fn begin_any_count(&mut self, peer: usize, expected: &Begin) -> Result<u64, DistError> {
        let got = self.read_begin(peer)?;
        let same_but_count = Begin {
            count: expected.count,
            ..got
        } == *expected;
        if !same_but_count {
            return Err(self.desync(peer, &got, expected));
        }
        Ok(got.count)
    }

    /// Fills `buf` with `peer`'s data.
    pub fn data(&mut self, peer: usize, buf: &mut [u8]) -> Result<(), DistError> {
        let (deadline, op, timeout) = (self.deadline, self.op, self.timeout);
        let named = self.world_ranks[peer];
        self.reader(peer)
            .read_data(buf, deadline)
            .map_err(|e| link_error(op, named, timeout, e))
    }

    fn read_begin(&mut self, peer: usize) -> Result<Begin, DistError> {
        let (deadline, op, timeout) = (self.deadline, self.op, self.timeout);
        let named = self.world_ranks[peer];
        self.reader(peer)
            .read_begin(deadline)
            .map_err(|e| link_error(op, named, timeout, e))
    }

    fn reader(&mut self, peer: usize) -> &mut LinkReader {
        self.readers[peer]
            .as_deref_mut()
            .expect("collectives only read from peers")
    }

    fn desync(&self, peer: usize, got: &Begin, expected: &Begin) -> DistError {
        DistError::Desync {
            op: self.op,
            peer: self.world_ranks[peer],
            theirs: got.to_string(),
            ours: expected.to_string(),
        }
    }
}

/// Turns a link failure into the error that names the peer (its rank in the job) and the
/// operation.
pub(crate) fn link_error(op: Op, peer: usize, timeout: Duration, e: LinkError) -> DistError {
    match e {
        LinkError::Closed(detail) => DistError::PeerClosed { op, peer, detail },
        LinkError::TimedOut => DistError::Timeout { op, peer, timeout },
        LinkError::Aborted { culprit, reason } => DistError::PeerAborted {
            op,
            peer,
            culprit,
            reason,
        },
        LinkError::Protocol(detail) => DistError::Protocol {
            context: op.to_string(),
            peer: format!("rank {peer}"),
            detail,
        },
    }
}

/// Runs one phase over `links` (by rank, `None` at this rank): sends `outgoing` on scoped
/// threads, runs `receive` here, and returns its result once every send has finished. The first
/// failure wins: the receive step's, else the lowest peer's send failure.
pub(crate) fn run_phase<R>(
    links: &mut [Option<Link>],
    op: Op,
    deadline: Instant,
    timeout: Duration,
    outgoing: Vec<Outgoing<'_>>,
    receive: impl FnOnce(&mut Incoming<'_>) -> Result<R, DistError>,
) -> Result<R, DistError> {
    let abort = AtomicBool::new(false);
    let mut readers = Vec::with_capacity(links.len());
    let mut writers: Vec<Option<&mut LinkWriter>> = Vec::with_capacity(links.len());
    let mut controls = Vec::with_capacity(links.len());
    let mut broken = Vec::with_capacity(links.len());
    let mut world_ranks = Vec::with_capacity(links.len());
    for link in links.iter_mut() {
        match link {
            Some(Link {
                world_rank,
                reader,
                writer,
                control,
                write_broken,
            }) => {
                world_ranks.push(*world_rank);
                readers.push(Some(reader));
                writers.push(Some(writer));
                controls.push(Some(&*control));
                broken.push(Some(write_broken));
            }
            None => {
                world_ranks.push(usize::MAX); // this rank: never read from or sent to
                readers.push(None);
                writers.push(None);
                controls.push(None);
                broken.push(None);
            }
        }
    }
    let mut incoming = Incoming {
        readers,
        world_ranks: world_ranks.clone(),
        op,
        deadline,
        timeout,
    };

    std::thread::scope(|scope| {
        let (done_tx, done_rx) = mpsc::channel::<usize>();
        let mut senders = Vec::with_capacity(outgoing.len());
        for out in outgoing {
            let writer = writers[out.peer]
                .take()
                .expect("one payload per peer, never to this rank");
            let done_tx = done_tx.clone();
            let abort = &abort;
            let peer = out.peer;
            let handle = scope.spawn(move || {
                let result = send(writer, &out, deadline, abort);
                let _ = done_tx.send(out.peer);
                result
            });
            senders.push((peer, handle));
        }
        drop(done_tx);

        let received = receive(&mut incoming);

        if received.is_err() && !senders.is_empty() {
            abort.store(true, Ordering::Release);
            let grace_end = deadline.min(Instant::now() + ABORT_GRACE);
            let mut finished = vec![false; controls.len()];
            while let Some(left) = grace_end.checked_duration_since(Instant::now()) {
                match done_rx.recv_timeout(left) {
                    Ok(peer) => finished[peer] = true,
                    Err(_) => break, // grace over, or every sender is done
                }
            }
            for (peer, _) in &senders {
                if let (false, Some(control)) = (finished[*peer], controls[*peer]) {
                    let _ = control.shutdown(Shutdown::Write);
                }
            }
        }

        let mut send_failure = None;
        for (peer, handle) in senders {
            let result = handle.join().expect("a sender thread panicked");
            if let Err(e) = result {
                if let Some(flag) = broken[peer].as_deref_mut() {
                    *flag = true;
                }
                if send_failure.is_none() {
                    send_failure = Some(link_error(op, world_ranks[peer], timeout, e));
                }
            }
        }
        let value = received?;
        match send_failure {
            Some(err) => Err(err),
            None => Ok(value),
        }
    })
}

fn send(
    writer: &mut LinkWriter,
    out: &Outgoing<'_>,
    deadline: Instant,
    abort: &AtomicBool,
) -> Result<(), LinkError> {
    if abort.load(Ordering::Acquire) {
        return Ok(());
    }
    writer.write_begin(&out.begin, deadline)?;
    writer.write_data(out.payload, deadline, abort)?;
    Ok(())
}
