//! The communicator the trainer calls: the same methods at every world size, backed by nothing
//! (one process), TCP (CPU) or NCCL (CUDA, feature `cuda`).
//!
//! Arguments are checked here, before anything is sent, so a wrong length is an error on the
//! rank that passed it and leaves the communicator usable. Every other failure poisons it.

use std::net::TcpListener;
use std::time::Duration;

use crate::element::Element;
use crate::env::RankEnv;
use crate::error::{DistError, Op};
use crate::rendezvous::{RendezvousConfig, rendezvous, rendezvous_on};
use crate::tcp::TcpComm;

/// The default collective timeout: as long as composer's, 300 s.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// Collectives among the ranks of a run, on flat host buffers (and, through
/// [`crate::tensor`], on burn tensors).
///
/// Sums are in rank order, whatever the timing (see the crate docs). Every call returns within
/// the timeout (plus about a second of cleanup); a failure names the rank to blame
/// ([`DistError::failed_rank`]) and poisons the communicator, so later calls fail at once.
pub struct Communicator {
    pub(crate) backend: Backend,
    rank: usize,
    world_size: usize,
}

pub(crate) enum Backend {
    /// World size 1: every operation is the identity.
    Single,
    Tcp(TcpComm),
    /// NCCL for device buffers; the TCP mesh (none at world size 1) for host buffers and
    /// metadata.
    #[cfg(feature = "cuda")]
    Nccl {
        nccl: crate::nccl::NcclComm,
        tcp: Option<TcpComm>,
    },
}

impl Communicator {
    /// The communicator of a process alone: rank 0 of 1, every operation the identity.
    pub fn single() -> Communicator {
        Communicator {
            backend: Backend::Single,
            rank: 0,
            world_size: 1,
        }
    }

    /// Joins the run described by `env`: with world size 1, [`Communicator::single`]; else the
    /// rendezvous at `MASTER_ADDR:MASTER_PORT` and a TCP mesh. Collectives time out after
    /// [`DEFAULT_TIMEOUT`] until [`Communicator::set_timeout`] says otherwise.
    pub fn connect(env: &RankEnv, cfg: &RendezvousConfig) -> Result<Communicator, DistError> {
        if env.world_size == 1 {
            return Ok(Communicator::single());
        }
        let rdv = rendezvous(env, cfg)?;
        let tcp = TcpComm::connect(&rdv, cfg.timeout, DEFAULT_TIMEOUT)?;
        Ok(Communicator::tcp(env, tcp))
    }

    /// [`Communicator::connect`] where rank 0 uses a listener the caller bound (to port 0 in
    /// tests, or one a launcher holds); other ranks ignore it.
    pub fn connect_on(
        env: &RankEnv,
        cfg: &RendezvousConfig,
        listener: TcpListener,
    ) -> Result<Communicator, DistError> {
        if env.world_size == 1 {
            return Ok(Communicator::single());
        }
        let rdv = rendezvous_on(env, cfg, listener)?;
        let tcp = TcpComm::connect(&rdv, cfg.timeout, DEFAULT_TIMEOUT)?;
        Ok(Communicator::tcp(env, tcp))
    }

    fn tcp(env: &RankEnv, tcp: TcpComm) -> Communicator {
        Communicator {
            backend: Backend::Tcp(tcp),
            rank: env.rank,
            world_size: env.world_size,
        }
    }

    #[cfg(feature = "cuda")]
    pub(crate) fn from_backend(backend: Backend, rank: usize, world_size: usize) -> Communicator {
        Communicator {
            backend,
            rank,
            world_size,
        }
    }

    /// Splits the ranks into groups, as `MPI_Comm_split` and `ncclCommSplit` do: the ranks that
    /// pass the same `color` form one group, numbered in the order of their ranks here, and each
    /// gets a communicator among its group. Every rank must call it (it gathers the colors).
    ///
    /// `HYBRID_SHARD` uses two: the ranks of a node (the shard group) and the ranks with the
    /// same local rank on every node (the replica group). On TCP a group runs on the mesh's
    /// existing connections (see [`TcpComm::subgroup`]); on NCCL it is `ncclCommSplit`'s
    /// communicator, beside a TCP group for host buffers. Errors from a group's collectives
    /// name ranks of the whole job, as this communicator's do.
    pub fn split(&mut self, color: usize) -> Result<Communicator, DistError> {
        let mut colors = vec![0u64; self.world_size];
        self.all_gather(&[color as u64], &mut colors)?;
        let members: Vec<usize> = (0..self.world_size)
            .filter(|r| colors[*r] == color as u64)
            .collect();
        let rank = members
            .iter()
            .position(|m| *m == self.rank)
            .expect("this rank has its own color");
        let world_size = members.len();
        let backend = match &mut self.backend {
            Backend::Single => Backend::Single,
            Backend::Tcp(_) if world_size == 1 => Backend::Single,
            Backend::Tcp(tcp) => Backend::Tcp(tcp.subgroup(&members)?),
            #[cfg(feature = "cuda")]
            Backend::Nccl { nccl, tcp } => {
                let nccl = nccl.split(color, self.rank, world_size)?;
                let tcp = match tcp {
                    Some(tcp) if world_size > 1 => Some(tcp.subgroup(&members)?),
                    _ => None,
                };
                Backend::Nccl { nccl, tcp }
            }
        };
        Ok(Communicator {
            backend,
            rank,
            world_size,
        })
    }

    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Ranks in the job.
    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// Which backend runs the collectives: `single`, `tcp` or `nccl`.
    pub fn backend_name(&self) -> &'static str {
        match &self.backend {
            Backend::Single => "single",
            Backend::Tcp(_) => "tcp",
            #[cfg(feature = "cuda")]
            Backend::Nccl { .. } => "nccl",
        }
    }

    /// How long a collective may take, from its start, before it fails naming the rank it was
    /// waiting for. The trainer sizes it from its step time.
    pub fn set_timeout(&mut self, timeout: Duration) {
        match &mut self.backend {
            Backend::Single => {}
            Backend::Tcp(tcp) => tcp.set_timeout(timeout),
            #[cfg(feature = "cuda")]
            Backend::Nccl { nccl, tcp } => {
                if let Some(tcp) = tcp {
                    tcp.set_timeout(timeout);
                }
                nccl.set_timeout(timeout);
            }
        }
    }

    /// The current collective timeout ([`DEFAULT_TIMEOUT`] at a world size of 1, where nothing
    /// waits).
    pub fn timeout(&self) -> Duration {
        match &self.backend {
            Backend::Single => DEFAULT_TIMEOUT,
            Backend::Tcp(tcp) => tcp.timeout(),
            #[cfg(feature = "cuda")]
            Backend::Nccl { nccl, .. } => nccl.timeout(),
        }
    }

    /// The TCP mesh, if any (host buffers travel on it in the NCCL backend too).
    pub(crate) fn host_mesh(&mut self) -> Option<&mut TcpComm> {
        match &mut self.backend {
            Backend::Single => None,
            Backend::Tcp(tcp) => Some(tcp),
            #[cfg(feature = "cuda")]
            Backend::Nccl { tcp, .. } => tcp.as_mut(),
        }
    }

    /// Sums `buf` over all ranks, in place: afterwards every rank holds
    /// `((x_0 + x_1) + x_2) + …`, added in rank order (see [`Element`] for the type sums run in).
    pub fn all_reduce<T: Element>(&mut self, buf: &mut [T]) -> Result<(), DistError> {
        match self.host_mesh() {
            None => Ok(()),
            Some(tcp) => tcp.all_reduce(buf),
        }
    }

    /// Sums `input` over all ranks and keeps this rank's shard: `output` becomes
    /// `Σ_r input_r[rank·s..(rank+1)·s]` with `s = output.len()`, summed in rank order.
    /// `input.len()` must be `world_size × output.len()` (pad to a multiple of the world size).
    pub fn reduce_scatter<T: Element>(
        &mut self,
        input: &[T],
        output: &mut [T],
    ) -> Result<(), DistError> {
        self.check_sharded(
            Op::ReduceScatter,
            input.len(),
            output.len(),
            "input",
            "output",
        )?;
        match self.host_mesh() {
            None => {
                output.copy_from_slice(input);
                Ok(())
            }
            Some(tcp) => tcp.reduce_scatter(input, output),
        }
    }

    /// Concatenates every rank's `input` in rank order into `output`, whose length must be
    /// `world_size × input.len()`.
    pub fn all_gather<T: Element>(
        &mut self,
        input: &[T],
        output: &mut [T],
    ) -> Result<(), DistError> {
        self.check_sharded(Op::AllGather, output.len(), input.len(), "output", "input")?;
        match self.host_mesh() {
            None => {
                output.copy_from_slice(input);
                Ok(())
            }
            Some(tcp) => tcp.all_gather(input, output),
        }
    }

    /// Copies `root`'s `buf` into every rank's `buf` (same length everywhere).
    pub fn broadcast<T: Element>(&mut self, buf: &mut [T], root: usize) -> Result<(), DistError> {
        self.check_root(root)?;
        match self.host_mesh() {
            None => Ok(()),
            Some(tcp) => tcp.broadcast(buf, root),
        }
    }

    /// Returns once every rank has called `barrier`.
    pub fn barrier(&mut self) -> Result<(), DistError> {
        match self.host_mesh() {
            None => Ok(()),
            Some(tcp) => tcp.barrier(),
        }
    }

    /// Every rank's bytes, indexed by rank; lengths may differ. For small metadata (per-rank
    /// checksums, shard lists): each blob is capped at 256 MiB.
    pub fn all_gather_bytes(&mut self, mine: &[u8]) -> Result<Vec<Vec<u8>>, DistError> {
        if mine.len() as u64 > crate::tcp::MAX_BLOB_BYTES {
            return Err(DistError::Argument {
                op: Op::AllGatherBytes,
                detail: format!(
                    "{} bytes is over the {} byte limit for metadata",
                    mine.len(),
                    crate::tcp::MAX_BLOB_BYTES
                ),
            });
        }
        match self.host_mesh() {
            None => Ok(vec![mine.to_vec()]),
            Some(tcp) => tcp.all_gather_bytes(mine),
        }
    }

    /// Checks `whole == world_size × part`.
    pub(crate) fn check_sharded(
        &self,
        op: Op,
        whole: usize,
        part: usize,
        whole_name: &str,
        part_name: &str,
    ) -> Result<(), DistError> {
        if part.checked_mul(self.world_size) != Some(whole) {
            return Err(DistError::Argument {
                op,
                detail: format!(
                    "{whole_name} has {whole} elements, but {part_name} has {part} and the world \
                     size is {} ({whole_name} must be world_size × {part_name}; pad to a multiple)",
                    self.world_size
                ),
            });
        }
        Ok(())
    }

    pub(crate) fn check_root(&self, root: usize) -> Result<(), DistError> {
        if root >= self.world_size {
            return Err(DistError::Argument {
                op: Op::Broadcast,
                detail: format!(
                    "root {root} is not below the world size {}",
                    self.world_size
                ),
            });
        }
        Ok(())
    }
}
