//! The CPU backend: collectives over a full mesh of TCP connections, with a fixed reduction
//! order.
//!
//! - **reduce-scatter** (first half of all_reduce): the buffer is cut into `world` chunks
//!   ([`crate::shard_range`]); every rank sends chunk `c` to rank `c`, and rank `c` sums the
//!   pieces in rank order, `((x_0 + x_1) + x_2) + …`, starting from rank 0's value. It reads
//!   segment by segment, rank after rank, so the order never depends on which bytes arrive
//!   first, and memory stays at one segment per rank.
//! - **all-gather**: every rank sends its chunk to every other.
//!
//! all_reduce is the two in turn: each rank sends and receives `2(world-1)/world` of the buffer,
//! the bandwidth-optimal amount. broadcast is a scatter from the root then an all-gather.
//!
//! Every collective has one deadline, `timeout` after it starts. The first failure (a peer's
//! connection closing, the deadline passing, a peer's abort, ranks out of step) ends it: this
//! rank tells every peer it can reach which rank it blames, closes all connections and refuses
//! further work (poisoned). A run restarts after a failure; it never continues on a mesh that
//! lost a rank.

mod mesh;
mod phase;

use std::net::Shutdown;
use std::time::{Duration, Instant};

use crate::element::Element;
use crate::error::{DistError, Op};
use crate::rendezvous::Rendezvous;
use crate::shard::{shard_ranges, split_mut};
use crate::wire::{Begin, LinkReader, LinkWriter, SEGMENT_BYTES};
use phase::{Incoming, Link, Outgoing, run_phase};

/// The largest blob [`TcpComm::all_gather_bytes`] accepts from a peer (it is for metadata).
pub(crate) const MAX_BLOB_BYTES: u64 = 256 << 20;

/// How long, per peer, a failing rank spends telling that peer why.
const ABORT_NOTICE: Duration = Duration::from_millis(50);

pub(crate) struct TcpComm {
    /// This rank, and the number of ranks, in this communicator (a group's differ from the
    /// job's).
    rank: usize,
    world_size: usize,
    /// This rank in the whole job, as errors and abort notices name it.
    world_rank: usize,
    /// By rank in this communicator; `None` at this rank.
    links: Vec<Option<Link>>,
    timeout: Duration,
    seq: u64,
    /// Groups made from this communicator so far (each gets its own sequence numbers).
    splits: u64,
    /// The first failure: its message and the rank it blamed.
    poisoned: Option<(String, Option<usize>)>,
}

impl TcpComm {
    /// Builds the mesh for a finished rendezvous, within `connect_timeout`.
    pub fn connect(
        rdv: &Rendezvous,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<TcpComm, DistError> {
        let streams = mesh::connect_mesh(rdv, Instant::now() + connect_timeout, connect_timeout)?;
        let mut links = Vec::with_capacity(streams.len());
        for (peer, stream) in streams.into_iter().enumerate() {
            links.push(match stream {
                None => None,
                Some(stream) => {
                    let clone = || {
                        stream
                            .try_clone()
                            .map_err(|e| DistError::io("duplicating a data connection", e))
                    };
                    Some(Link {
                        world_rank: peer,
                        reader: LinkReader::new(clone()?),
                        writer: LinkWriter::new(clone()?),
                        control: stream,
                        write_broken: false,
                    })
                }
            });
        }
        Ok(TcpComm {
            rank: rdv.rank,
            world_rank: rdv.rank,
            world_size: rdv.world_size,
            links,
            timeout,
            seq: 0,
            splits: 0,
            poisoned: None,
        })
    }

    /// A communicator among `members` (ranks of this one, ascending, this rank among them) on
    /// the connections this one already has: the mesh is full, so every pair of members is
    /// connected. The two share those sockets, which is safe because a rank runs one collective
    /// at a time and every rank calls them in the same order. The n-th group made from this
    /// communicator numbers its collectives from `n << 48`, which tells them apart on the wire
    /// from this communicator's and from other groups': a rank that calls a group's collective
    /// while its peer calls another communicator's gets [`DistError::Desync`], not a wrong
    /// result.
    pub fn subgroup(&mut self, members: &[usize]) -> Result<TcpComm, DistError> {
        if let Some((first, culprit)) = &self.poisoned {
            return Err(DistError::Poisoned {
                first: first.clone(),
                culprit: *culprit,
            });
        }
        let rank = members
            .iter()
            .position(|m| *m == self.rank)
            .expect("the caller includes this rank");
        self.splits += 1;
        let mut links = Vec::with_capacity(members.len());
        for &m in members {
            links.push(match &self.links[m] {
                None => None,
                Some(link) => {
                    let clone = || {
                        link.control
                            .try_clone()
                            .map_err(|e| DistError::io("duplicating a data connection", e))
                    };
                    Some(Link {
                        world_rank: link.world_rank,
                        reader: LinkReader::new(clone()?),
                        writer: LinkWriter::new(clone()?),
                        control: clone()?,
                        write_broken: false,
                    })
                }
            });
        }
        Ok(TcpComm {
            rank,
            world_rank: self.world_rank,
            world_size: members.len(),
            links,
            timeout: self.timeout,
            seq: self.splits << 48,
            splits: 0,
            poisoned: None,
        })
    }

    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn peers(&self) -> impl Iterator<Item = usize> + use<> {
        let me = self.rank;
        (0..self.world_size).filter(move |r| *r != me)
    }

    /// Runs one collective: refuses if poisoned, numbers it, gives it its deadline, and poisons
    /// the communicator if it fails.
    fn collective<R>(
        &mut self,
        body: impl FnOnce(&mut TcpComm, u64, Instant) -> Result<R, DistError>,
    ) -> Result<R, DistError> {
        if let Some((first, culprit)) = &self.poisoned {
            return Err(DistError::Poisoned {
                first: first.clone(),
                culprit: *culprit,
            });
        }
        let seq = self.seq;
        self.seq += 1;
        let deadline = Instant::now() + self.timeout;
        let result = body(self, seq, deadline);
        if let Err(err) = &result {
            self.fail(err);
        }
        result
    }

    /// After a failure: tell every peer still writable whom this rank blames, then close every
    /// connection so no peer waits on this rank any longer.
    fn fail(&mut self, err: &DistError) {
        let culprit = err.failed_rank();
        let reason = err.to_string();
        for link in self.links.iter_mut().flatten() {
            if !link.write_broken {
                let blamed = culprit.unwrap_or(self.world_rank);
                let _ = link
                    .writer
                    .write_abort(blamed, &reason, Instant::now() + ABORT_NOTICE);
            }
            let _ = link.control.shutdown(Shutdown::Both);
        }
        self.poisoned = Some((reason, culprit));
    }

    /// Sum over ranks, in place; every rank ends with the same buffer.
    pub fn all_reduce<T: Element>(&mut self, buf: &mut [T]) -> Result<(), DistError> {
        let op = Op::AllReduce;
        self.collective(|comm, seq, deadline| {
            let ranges = shard_ranges(buf.len(), comm.world_size);
            let total = buf.len() as u64;
            let mut parts = split_mut(buf, &ranges);
            let mine = std::mem::take(&mut parts[comm.rank]);
            let sends = shared(parts, comm.rank);
            comm.reduce_phase(op, seq, deadline, total, sends, mine)?;

            let mut parts = split_mut(buf, &ranges);
            let mine = std::mem::take(&mut parts[comm.rank]);
            comm.gather_phase(
                op,
                1,
                seq,
                deadline,
                total,
                0,
                mine,
                others(parts, comm.rank),
            )
        })
    }

    /// `output` = this rank's chunk of the sum of every rank's `input`.
    pub fn reduce_scatter<T: Element>(
        &mut self,
        input: &[T],
        output: &mut [T],
    ) -> Result<(), DistError> {
        let op = Op::ReduceScatter;
        self.collective(|comm, seq, deadline| {
            let ranges = shard_ranges(input.len(), comm.world_size);
            output.copy_from_slice(&input[ranges[comm.rank].clone()]);
            let sends = comm
                .peers()
                .map(|p| (p, &input[ranges[p].clone()]))
                .collect();
            comm.reduce_phase(op, seq, deadline, input.len() as u64, sends, output)
        })
    }

    /// `output` = every rank's `input`, concatenated in rank order.
    pub fn all_gather<T: Element>(
        &mut self,
        input: &[T],
        output: &mut [T],
    ) -> Result<(), DistError> {
        let op = Op::AllGather;
        self.collective(|comm, seq, deadline| {
            let ranges = shard_ranges(output.len(), comm.world_size);
            let total = output.len() as u64;
            let mut parts = split_mut(output, &ranges);
            parts[comm.rank].copy_from_slice(input);
            let mine = std::mem::take(&mut parts[comm.rank]);
            comm.gather_phase(
                op,
                0,
                seq,
                deadline,
                total,
                0,
                mine,
                others(parts, comm.rank),
            )
        })
    }

    /// Every rank's `buf` becomes `root`'s.
    pub fn broadcast<T: Element>(&mut self, buf: &mut [T], root: usize) -> Result<(), DistError> {
        let op = Op::Broadcast;
        self.collective(|comm, seq, deadline| {
            let ranges = shard_ranges(buf.len(), comm.world_size);
            let total = buf.len() as u64;
            let begin = |count: usize| Begin {
                op,
                phase: 0,
                dtype: T::CODE,
                seq,
                count: count as u64,
                total,
                root: root as u32,
            };
            // Scatter: the root sends rank c its chunk c.
            let (me, timeout) = (comm.rank, comm.timeout);
            if me == root {
                let outgoing = comm
                    .peers()
                    .map(|p| Outgoing {
                        peer: p,
                        begin: begin(ranges[p].len()),
                        payload: bytemuck::cast_slice(&buf[ranges[p].clone()]),
                    })
                    .collect();
                run_phase(&mut comm.links, op, deadline, timeout, outgoing, |_| Ok(()))?;
            } else {
                let mine = &mut buf[ranges[me].clone()];
                run_phase(&mut comm.links, op, deadline, timeout, Vec::new(), |inc| {
                    inc.begin(root, &begin(mine.len()))?;
                    inc.data(root, bytemuck::cast_slice_mut(mine))
                })?;
            }
            // All-gather the chunks.
            let mut parts = split_mut(buf, &ranges);
            let mine = std::mem::take(&mut parts[me]);
            comm.gather_phase(op, 1, seq, deadline, total, root, mine, others(parts, me))
        })
    }

    /// Returns once every rank has called it.
    pub fn barrier(&mut self) -> Result<(), DistError> {
        let op = Op::Barrier;
        self.collective(|comm, seq, deadline| {
            let begin = Begin {
                op,
                phase: 0,
                dtype: 0,
                seq,
                count: 0,
                total: 0,
                root: 0,
            };
            let peers: Vec<usize> = comm.peers().collect();
            let outgoing = peers
                .iter()
                .map(|&p| Outgoing {
                    peer: p,
                    begin,
                    payload: &[],
                })
                .collect();
            let timeout = comm.timeout;
            run_phase(&mut comm.links, op, deadline, timeout, outgoing, |inc| {
                peers.iter().try_for_each(|&p| inc.begin(p, &begin))
            })
        })
    }

    /// Every rank's bytes, by rank (lengths may differ).
    pub fn all_gather_bytes(&mut self, mine: &[u8]) -> Result<Vec<Vec<u8>>, DistError> {
        let op = Op::AllGatherBytes;
        self.collective(|comm, seq, deadline| {
            let begin = |count: u64| Begin {
                op,
                phase: 0,
                dtype: 0,
                seq,
                count,
                total: 0,
                root: 0,
            };
            let peers: Vec<usize> = comm.peers().collect();
            let outgoing = peers
                .iter()
                .map(|&p| Outgoing {
                    peer: p,
                    begin: begin(mine.len() as u64),
                    payload: mine,
                })
                .collect();
            let (me, world, timeout) = (comm.rank, comm.world_size, comm.timeout);
            run_phase(&mut comm.links, op, deadline, timeout, outgoing, |inc| {
                let mut all = vec![Vec::new(); world];
                all[me] = mine.to_vec();
                for &p in &peers {
                    let len = inc.begin_any_count(p, &begin(0))?;
                    if len > MAX_BLOB_BYTES {
                        return Err(DistError::Protocol {
                            context: op.to_string(),
                            peer: format!("rank {p}"),
                            detail: format!(
                                "a blob of {len} bytes (the limit is {MAX_BLOB_BYTES})"
                            ),
                        });
                    }
                    all[p] = vec![0u8; len as usize];
                    inc.data(p, &mut all[p])?;
                }
                Ok(all)
            })
        })
    }

    /// Reduce-scatter: sends each peer its piece, and sums every rank's piece of this rank's
    /// chunk into `mine` (which holds this rank's own piece on entry) in rank order.
    fn reduce_phase<T: Element>(
        &mut self,
        op: Op,
        seq: u64,
        deadline: Instant,
        total: u64,
        sends: Vec<(usize, &[T])>,
        mine: &mut [T],
    ) -> Result<(), DistError> {
        let begin = |count: usize| Begin {
            op,
            phase: 0,
            dtype: T::CODE,
            seq,
            count: count as u64,
            total,
            root: 0,
        };
        let outgoing = sends
            .into_iter()
            .map(|(peer, piece)| Outgoing {
                peer,
                begin: begin(piece.len()),
                payload: bytemuck::cast_slice(piece),
            })
            .collect();
        let (me, world, timeout) = (self.rank, self.world_size, self.timeout);
        let expected = begin(mine.len());
        run_phase(&mut self.links, op, deadline, timeout, outgoing, |inc| {
            for peer in (0..world).filter(|r| *r != me) {
                inc.begin(peer, &expected)?;
            }
            sum_in_rank_order(inc, op, me, world, mine)
        })
    }

    /// All-gather: sends `mine` to every peer and fills each `(peer, out)` with that peer's.
    #[allow(clippy::too_many_arguments)]
    fn gather_phase<T: Element>(
        &mut self,
        op: Op,
        phase: u8,
        seq: u64,
        deadline: Instant,
        total: u64,
        root: usize,
        mine: &[T],
        outs: Vec<(usize, &mut [T])>,
    ) -> Result<(), DistError> {
        let begin = |count: usize| Begin {
            op,
            phase,
            dtype: T::CODE,
            seq,
            count: count as u64,
            total,
            root: root as u32,
        };
        let outgoing = self
            .peers()
            .map(|peer| Outgoing {
                peer,
                begin: begin(mine.len()),
                payload: bytemuck::cast_slice(mine),
            })
            .collect();
        let timeout = self.timeout;
        run_phase(&mut self.links, op, deadline, timeout, outgoing, |inc| {
            for (peer, out) in outs {
                inc.begin(peer, &begin(out.len()))?;
                inc.data(peer, bytemuck::cast_slice_mut(out))?;
            }
            Ok(())
        })
    }
}

/// The fixed-order sum: for each segment of this rank's chunk, `acc = x_0`, then
/// `acc += x_r` for r = 1, 2, … (this rank's own piece taken from `mine` at its turn), then
/// `mine = acc`.
fn sum_in_rank_order<T: Element>(
    inc: &mut Incoming<'_>,
    op: Op,
    me: usize,
    world: usize,
    mine: &mut [T],
) -> Result<(), DistError> {
    let segment = (SEGMENT_BYTES / size_of::<T>()).max(1);
    let mut scratch = vec![T::zeroed(); segment.min(mine.len())];
    let mut acc = vec![T::Acc::default(); segment.min(mine.len())];
    let mut start = 0;
    while start < mine.len() {
        let end = (start + segment).min(mine.len());
        let n = end - start;
        for r in 0..world {
            let piece: &[T] = if r == me {
                &mine[start..end]
            } else {
                inc.data(r, bytemuck::cast_slice_mut(&mut scratch[..n]))?;
                &scratch[..n]
            };
            if r == 0 {
                T::start(&mut acc[..n], piece);
            } else if !T::accumulate(&mut acc[..n], piece) {
                return Err(DistError::Argument {
                    op,
                    detail: format!("a {} sum overflowed", T::NAME),
                });
            }
        }
        T::finish(&acc[..n], &mut mine[start..end]);
        start = end;
    }
    Ok(())
}

/// The chunks other than this rank's, as what to send each peer.
fn shared<T>(parts: Vec<&mut [T]>, me: usize) -> Vec<(usize, &[T])> {
    parts
        .into_iter()
        .enumerate()
        .filter(|(r, _)| *r != me)
        .map(|(r, p)| (r, &*p))
        .collect()
}

/// The chunks other than this rank's, to be filled by their owners.
fn others<T>(parts: Vec<&mut [T]>, me: usize) -> Vec<(usize, &mut [T])> {
    parts
        .into_iter()
        .enumerate()
        .filter(|(r, _)| *r != me)
        .collect()
}
