//! The one error type of `tessera_dist`, and the names of the collectives it reports.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// A collective operation, as named in errors and checked between ranks (two ranks that call
/// different operations at the same point get [`DistError::Desync`], not a garbled result).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// Every rank ends with the sum of all ranks' buffers.
    AllReduce,
    /// Every rank ends with its shard of the sum.
    ReduceScatter,
    /// Every rank ends with all ranks' buffers, concatenated in rank order.
    AllGather,
    /// Every rank ends with the root's buffer.
    Broadcast,
    /// No rank goes on before all have arrived.
    Barrier,
    /// All-gather of byte strings of any length.
    AllGatherBytes,
}

impl Op {
    /// The operation's code on the wire.
    pub(crate) fn code(self) -> u8 {
        match self {
            Op::AllReduce => 1,
            Op::ReduceScatter => 2,
            Op::AllGather => 3,
            Op::Broadcast => 4,
            Op::Barrier => 5,
            Op::AllGatherBytes => 6,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Op> {
        [
            Op::AllReduce,
            Op::ReduceScatter,
            Op::AllGather,
            Op::Broadcast,
            Op::Barrier,
            Op::AllGatherBytes,
        ]
        .into_iter()
        .find(|op| op.code() == code)
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::AllReduce => "all_reduce",
            Op::ReduceScatter => "reduce_scatter",
            Op::AllGather => "all_gather",
            Op::Broadcast => "broadcast",
            Op::Barrier => "barrier",
            Op::AllGatherBytes => "all_gather_bytes",
        })
    }
}

/// Everything that can go wrong while reading the rank environment, meeting the other ranks or
/// running a collective. Variants name the variable, the rank and the operation involved;
/// [`DistError::failed_rank`] gives the rank to blame, for incident logs.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// An environment variable is missing, malformed or inconsistent with another one.
    #[error("rank environment: {0}")]
    Env(String),

    /// Rank 0 waited for the whole timeout and these ranks never joined.
    #[error(
        "rendezvous at {addr}: rank(s) {missing:?} of {world_size} did not join within {timeout:?}"
    )]
    RanksMissing {
        /// The address concerned.
        addr: String,
        /// What is missing.
        missing: Vec<usize>,
        /// Ranks in the job.
        world_size: usize,
        /// The time limit that ran out.
        timeout: Duration,
    },

    /// A non-zero rank could not reach rank 0, or rank 0 did not answer, within the timeout.
    #[error("rendezvous: rank 0 at MASTER_ADDR:MASTER_PORT = {addr} {detail} (waited {timeout:?})")]
    MasterUnreachable {
        /// The address concerned.
        addr: String,
        /// Details of the failure.
        detail: String,
        /// The time limit that ran out.
        timeout: Duration,
    },

    /// A rank disagrees with rank 0 on something every rank must share.
    #[error("rendezvous: rank {rank} has {field} {found:?}, but rank 0 has {expected:?}")]
    Mismatch {
        /// The rank concerned.
        rank: usize,
        /// The field at fault.
        field: &'static str,
        /// What was found instead.
        found: String,
        /// What was expected.
        expected: String,
    },

    /// Two processes claimed the same rank.
    #[error("rendezvous: rank {rank} joined twice (from {first} and {second})")]
    DuplicateRank {
        /// The rank concerned.
        rank: usize,
        /// The first one.
        first: SocketAddr,
        /// The second one.
        second: SocketAddr,
    },

    /// A process claimed a rank that does not exist in this world.
    #[error("rendezvous: a process at {from} claims rank {rank}, but WORLD_SIZE is {world_size}")]
    RankOutOfRange {
        /// The rank concerned.
        rank: usize,
        /// Ranks in the job.
        world_size: usize,
        /// Where the claim came from.
        from: SocketAddr,
    },

    /// Rank 0 refused to start the run; the reason names the rank at fault.
    #[error("rendezvous: rank 0 stopped the run: {reason}")]
    Rejected {
        /// Why it failed.
        reason: String,
        /// The rank or peer blamed.
        culprit: Option<usize>,
    },

    /// The full mesh of data connections could not be built in time.
    #[error("connecting ranks: rank(s) {missing:?} {detail} (timeout {timeout:?})")]
    MeshIncomplete {
        /// What is missing.
        missing: Vec<usize>,
        /// Details of the failure.
        detail: String,
        /// The time limit that ran out.
        timeout: Duration,
    },

    /// A peer's connection closed or reset: the process exited, crashed or its host went away.
    #[error("{op}: rank {peer} closed its connection ({detail})")]
    PeerClosed {
        /// The operation that failed.
        op: Op,
        /// The other rank.
        peer: usize,
        /// Details of the failure.
        detail: String,
    },

    /// A peer sent nothing for the whole timeout: it stalled, or is far slower than this rank.
    #[error("{op}: rank {peer} sent nothing for {timeout:?} (it stalled or died)")]
    Timeout {
        /// The operation that failed.
        op: Op,
        /// The other rank.
        peer: usize,
        /// The time limit that ran out.
        timeout: Duration,
    },

    /// A peer gave up on the collective because of a failure it saw, and said which rank failed.
    #[error("{op}: rank {peer} aborted the collective because rank {culprit} failed: {reason}")]
    PeerAborted {
        /// The operation that failed.
        op: Op,
        /// The other rank.
        peer: usize,
        /// The rank or peer blamed.
        culprit: usize,
        /// Why it failed.
        reason: String,
    },

    /// Two ranks called different collectives, or the same one with different arguments.
    #[error("{op}: ranks out of step: rank {peer} called {theirs}, this rank called {ours}")]
    Desync {
        /// The operation that failed.
        op: Op,
        /// The other rank.
        peer: usize,
        /// What the other rank called.
        theirs: String,
        /// What this rank called.
        ours: String,
    },

    /// A peer sent bytes that are not tessera's protocol.
    #[error("{context}: protocol error from {peer}: {detail}")]
    Protocol {
        /// What was being done.
        context: String,
        /// The other rank.
        peer: String,
        /// Details of the failure.
        detail: String,
    },

    /// An earlier collective failed; the communicator refuses further work (the run must restart).
    #[error("communicator unusable after an earlier failure: {first}")]
    Poisoned {
        /// The first one.
        first: String,
        /// The rank or peer blamed.
        culprit: Option<usize>,
    },

    /// The caller passed buffers or arguments that do not fit the operation (nothing was sent).
    #[error("{op}: {detail}")]
    Argument {
        /// The operation that failed.
        op: Op,
        /// Details of the failure.
        detail: String,
    },

    /// A tensor this crate cannot carry (its dtype), or a tensor read that failed.
    #[error("tensor: {0}")]
    Tensor(String),

    /// A local socket operation failed (binding a port, resolving an address).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The NCCL backend failed (library missing, init or a collective failed or timed out).
    #[error("NCCL: {detail}")]
    Nccl {
        /// Details of the failure.
        detail: String,
        /// The rank or peer blamed.
        culprit: Option<usize>,
    },
}

impl DistError {
    /// The rank this error blames, when it names one: the rank that went missing, closed, stalled
    /// or disagreed. A launcher writes it into its incident log.
    pub fn failed_rank(&self) -> Option<usize> {
        match self {
            DistError::RanksMissing { missing, .. } | DistError::MeshIncomplete { missing, .. } => {
                missing.first().copied()
            }
            DistError::MasterUnreachable { .. } => Some(0),
            DistError::Mismatch { rank, .. }
            | DistError::DuplicateRank { rank, .. }
            | DistError::RankOutOfRange { rank, .. } => Some(*rank),
            DistError::PeerClosed { peer, .. }
            | DistError::Timeout { peer, .. }
            | DistError::Desync { peer, .. } => Some(*peer),
            DistError::PeerAborted { culprit, .. } => Some(*culprit),
            DistError::Rejected { culprit, .. }
            | DistError::Poisoned { culprit, .. }
            | DistError::Nccl { culprit, .. } => *culprit,
            DistError::Env(_)
            | DistError::Protocol { .. }
            | DistError::Argument { .. }
            | DistError::Tensor(_)
            | DistError::Io { .. } => None,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> DistError {
        DistError::Io {
            context: context.into(),
            source,
        }
    }
}
