//! Meeting the other ranks: rank 0 listens on `MASTER_ADDR:MASTER_PORT`, every other rank
//! connects to it and introduces itself, and rank 0 answers everyone with the peer table.
//!
//! Each rank sends rank 0 a `Hello`: its rank, the world size, the run's config hash, its tessera
//! version and the address of its own data listener. Rank 0 checks that everyone agrees with it
//! (error naming the rank and both values), that no rank comes twice, and once all `world - 1`
//! ranks are in, answers each with `Welcome`: every rank's data address, a session id (so stale
//! processes of an earlier run cannot join the mesh), and an opaque blob (the NCCL unique id when
//! the NCCL backend is used). When it gives up (a rank is missing or disagrees) it answers the
//! ranks already connected with `Reject`, so they fail at once with the same reason.
//!
//! Messages are JSON, each after its `u32` little-endian length. Nothing here waits past the
//! deadline: rank 0's error names the missing ranks; the others' name rank 0's address.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::env::RankEnv;
use crate::error::DistError;
use crate::wire::{LinkError, read_full, time_left, write_full};

/// Bumped whenever the rendezvous or the data frames change meaning.
pub const PROTOCOL_VERSION: u32 = 1;

/// A control message longer than this is not ours.
const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// How long rank 0 waits for a fresh connection's `Hello` before dropping it (a port scanner
/// or a stale process must not hold the rendezvous up).
const HELLO_WAIT: Duration = Duration::from_secs(10);

/// What the ranks must agree on, and how long to wait for each other.
#[derive(Debug, Clone)]
pub struct RendezvousConfig {
    /// A digest of the run's resolved config; every rank must present the same one.
    pub config_hash: String,
    /// The tessera version every rank must run (defaults to this crate's).
    pub version: String,
    /// How long rank 0 waits for everyone, and the others for rank 0 (start-up included).
    pub timeout: Duration,
    /// Opaque bytes rank 0 hands to every rank (the NCCL unique id); ignored on other ranks.
    pub blob: Vec<u8>,
}

impl RendezvousConfig {
    /// The defaults: this crate's version, a 300 s timeout (composer's), no blob.
    pub fn new(config_hash: impl Into<String>) -> RendezvousConfig {
        RendezvousConfig {
            config_hash: config_hash.into(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            timeout: Duration::from_secs(300),
            blob: Vec::new(),
        }
    }
}

/// The outcome of a rendezvous: who is where, and the data listener the mesh is built on.
#[derive(Debug)]
pub struct Rendezvous {
    /// This process's rank.
    pub rank: usize,
    /// Ranks in the job.
    pub world_size: usize,
    /// Every rank's data address, by rank.
    pub peers: Vec<SocketAddr>,
    /// Rank 0's random id for this run.
    pub session: u64,
    /// Rank 0's blob.
    pub blob: Vec<u8>,
    /// This rank's data listener (its address is `peers[rank]`).
    pub data_listener: TcpListener,
}

#[derive(Debug, Serialize, Deserialize)]
struct Hello {
    protocol: u32,
    rank: usize,
    world_size: usize,
    config_hash: String,
    version: String,
    data_addr: SocketAddr,
}

#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    Welcome {
        session: u64,
        peers: Vec<SocketAddr>,
        blob: Vec<u8>,
    },
    Reject {
        reason: String,
        culprit: Option<usize>,
    },
}

/// Meets the other ranks of `env` (world size 2 or more). Rank 0 binds `MASTER_ADDR:MASTER_PORT`
/// itself; see [`rendezvous_on`] to hand it a bound listener instead.
pub fn rendezvous(env: &RankEnv, cfg: &RendezvousConfig) -> Result<Rendezvous, DistError> {
    check_env(env)?;
    if env.rank == 0 {
        let listener = bind_master(env)?;
        rendezvous_on(env, cfg, listener)
    } else {
        join(env, cfg, Instant::now() + cfg.timeout)
    }
}

/// Rank 0's side with a listener the caller bound (for example to port 0, in tests).
/// On other ranks the listener is dropped and this is [`rendezvous`].
pub fn rendezvous_on(
    env: &RankEnv,
    cfg: &RendezvousConfig,
    listener: TcpListener,
) -> Result<Rendezvous, DistError> {
    check_env(env)?;
    let deadline = Instant::now() + cfg.timeout;
    if env.rank != 0 {
        drop(listener);
        return join(env, cfg, deadline);
    }
    host(env, cfg, listener, deadline)
}

/// A hand-built `RankEnv` gets the checks `RankEnv::from_vars` makes on the rank.
fn check_env(env: &RankEnv) -> Result<(), DistError> {
    if env.world_size < 2 || env.rank >= env.world_size {
        return Err(DistError::Env(format!(
            "a rendezvous needs rank < world size >= 2, not rank {} of {}",
            env.rank, env.world_size
        )));
    }
    Ok(())
}

fn master_label(env: &RankEnv) -> String {
    format!("{}:{}", env.master_addr, env.master_port)
}

fn resolve(env: &RankEnv) -> io::Result<Vec<SocketAddr>> {
    Ok((env.master_addr.as_str(), env.master_port)
        .to_socket_addrs()?
        .collect())
}

fn bind_master(env: &RankEnv) -> Result<TcpListener, DistError> {
    let context = || {
        format!(
            "rank 0 listening on MASTER_ADDR:MASTER_PORT = {}",
            master_label(env)
        )
    };
    let addrs = resolve(env).map_err(|e| DistError::io(context(), e))?;
    let mut last = io::Error::new(io::ErrorKind::AddrNotAvailable, "no address");
    for addr in addrs {
        match TcpListener::bind(addr) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = e,
        }
    }
    Err(DistError::io(context(), last))
}

/// Rank 0: gathers every rank's `Hello`, checks it, answers all with `Welcome`.
fn host(
    env: &RankEnv,
    cfg: &RendezvousConfig,
    listener: TcpListener,
    deadline: Instant,
) -> Result<Rendezvous, DistError> {
    let master = listener
        .local_addr()
        .map_err(|e| DistError::io("rendezvous listener address", e))?;
    let data_listener = TcpListener::bind((master.ip(), 0))
        .map_err(|e| DistError::io(format!("rank 0 data listener on {}", master.ip()), e))?;
    let data_addr = data_listener
        .local_addr()
        .map_err(|e| DistError::io("rank 0 data listener address", e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| DistError::io("rendezvous listener", e))?;

    // joined[r]: rank r's connection and where it came from.
    let mut joined: Vec<Option<(TcpStream, SocketAddr, SocketAddr)>> =
        (0..env.world_size).map(|_| None).collect();
    let mut waiting = env.world_size - 1;
    while waiting > 0 {
        let (mut stream, from) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if time_left(deadline).is_none() {
                    let missing: Vec<usize> = (1..env.world_size)
                        .filter(|r| joined[*r].is_none())
                        .collect();
                    let err = DistError::RanksMissing {
                        addr: master_label(env),
                        missing,
                        world_size: env.world_size,
                        timeout: cfg.timeout,
                    };
                    reject_all(&mut joined, None, &err);
                    return Err(err);
                }
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(DistError::io("rendezvous accept", e)),
        };
        let hello_deadline = deadline.min(Instant::now() + HELLO_WAIT);
        let hello: Hello = match stream
            .set_nonblocking(false)
            .map_err(|e| LinkError::Closed(e.to_string()))
            .and_then(|()| read_message(&mut stream, hello_deadline))
        {
            Ok(hello) => hello,
            // Not a tessera rank (or one that died mid-hello): forget the connection.
            Err(_) => continue,
        };
        if let Err(err) = check_hello(&hello, from, env, cfg, &joined) {
            reject_all(&mut joined, Some(&mut stream), &err);
            return Err(err);
        }
        joined[hello.rank] = Some((stream, from, hello.data_addr));
        waiting -= 1;
    }

    let session = random_session();
    let mut peers = vec![data_addr];
    peers.extend(
        joined
            .iter()
            .skip(1)
            .map(|j| j.as_ref().expect("every rank joined").2),
    );
    let welcome = Reply::Welcome {
        session,
        peers: peers.clone(),
        blob: cfg.blob.clone(),
    };
    for (stream, _, _) in joined.iter_mut().flatten() {
        // A rank that died since its hello shows up when the mesh is built, by rank.
        let _ = write_message(stream, &welcome, deadline);
    }
    Ok(Rendezvous {
        rank: 0,
        world_size: env.world_size,
        peers,
        session,
        blob: cfg.blob.clone(),
        data_listener,
    })
}

/// Rank 0's checks of one `Hello`, against itself and the ranks already in.
fn check_hello(
    hello: &Hello,
    from: SocketAddr,
    env: &RankEnv,
    cfg: &RendezvousConfig,
    joined: &[Option<(TcpStream, SocketAddr, SocketAddr)>],
) -> Result<(), DistError> {
    let mismatch = |field, found: String, expected: String| DistError::Mismatch {
        rank: hello.rank,
        field,
        found,
        expected,
    };
    if hello.protocol != PROTOCOL_VERSION {
        return Err(mismatch(
            "protocol version",
            hello.protocol.to_string(),
            PROTOCOL_VERSION.to_string(),
        ));
    }
    if hello.rank == 0 || hello.rank >= env.world_size {
        return Err(DistError::RankOutOfRange {
            rank: hello.rank,
            world_size: env.world_size,
            from,
        });
    }
    if hello.world_size != env.world_size {
        return Err(mismatch(
            "WORLD_SIZE",
            hello.world_size.to_string(),
            env.world_size.to_string(),
        ));
    }
    if hello.version != cfg.version {
        return Err(mismatch(
            "tessera version",
            hello.version.clone(),
            cfg.version.clone(),
        ));
    }
    if hello.config_hash != cfg.config_hash {
        return Err(mismatch(
            "config hash",
            hello.config_hash.clone(),
            cfg.config_hash.clone(),
        ));
    }
    if let Some((_, first, _)) = &joined[hello.rank] {
        return Err(DistError::DuplicateRank {
            rank: hello.rank,
            first: *first,
            second: from,
        });
    }
    Ok(())
}

/// Tells every connected rank (and `extra`) that the run will not start, and why.
fn reject_all(
    joined: &mut [Option<(TcpStream, SocketAddr, SocketAddr)>],
    extra: Option<&mut TcpStream>,
    err: &DistError,
) {
    let reject = Reply::Reject {
        reason: err.to_string(),
        culprit: err.failed_rank(),
    };
    let deadline = Instant::now() + Duration::from_secs(1);
    for (stream, _, _) in joined.iter_mut().flatten() {
        let _ = write_message(stream, &reject, deadline);
    }
    if let Some(stream) = extra {
        let _ = write_message(stream, &reject, deadline);
    }
}

/// A non-zero rank: connects to rank 0 (retrying until the deadline, since rank 0 may start
/// later), introduces itself and waits for the answer.
fn join(env: &RankEnv, cfg: &RendezvousConfig, deadline: Instant) -> Result<Rendezvous, DistError> {
    let unreachable = |detail: String| DistError::MasterUnreachable {
        addr: master_label(env),
        detail,
        timeout: cfg.timeout,
    };
    let mut stream = connect_with_retry(env, deadline)
        .map_err(|e| unreachable(format!("could not be reached: {e}")))?;
    let local_ip = stream
        .local_addr()
        .map_err(|e| DistError::io("rendezvous connection", e))?
        .ip();
    // Peers reach this rank on the interface that reaches rank 0.
    let data_listener = TcpListener::bind((local_ip, 0))
        .map_err(|e| DistError::io(format!("rank {} data listener on {local_ip}", env.rank), e))?;
    let hello = Hello {
        protocol: PROTOCOL_VERSION,
        rank: env.rank,
        world_size: env.world_size,
        config_hash: cfg.config_hash.clone(),
        version: cfg.version.clone(),
        data_addr: data_listener
            .local_addr()
            .map_err(|e| DistError::io("data listener address", e))?,
    };
    write_message(&mut stream, &hello, deadline)
        .map_err(|e| unreachable(format!("dropped the connection: {}", describe(&e))))?;
    let reply: Reply = read_message(&mut stream, deadline).map_err(|e| match e {
        LinkError::TimedOut => unreachable(
            "did not answer (it may still be waiting for other ranks; its log names them)".into(),
        ),
        other => unreachable(format!("closed the rendezvous: {}", describe(&other))),
    })?;
    match reply {
        Reply::Reject { reason, culprit } => Err(DistError::Rejected { reason, culprit }),
        Reply::Welcome {
            session,
            peers,
            blob,
        } => {
            if peers.len() != env.world_size {
                return Err(DistError::Protocol {
                    context: "rendezvous".into(),
                    peer: "rank 0".into(),
                    detail: format!(
                        "peer table has {} entries for world size {}",
                        peers.len(),
                        env.world_size
                    ),
                });
            }
            Ok(Rendezvous {
                rank: env.rank,
                world_size: env.world_size,
                peers,
                session,
                blob,
                data_listener,
            })
        }
    }
}

/// Connects to rank 0, retrying with backoff (50 ms doubling to 1 s) until the deadline.
fn connect_with_retry(env: &RankEnv, deadline: Instant) -> Result<TcpStream, String> {
    let mut backoff = Duration::from_millis(50);
    let mut last = String::from("no attempt");
    loop {
        match resolve(env) {
            Ok(addrs) if addrs.is_empty() => last = "the name resolves to no address".into(),
            Ok(addrs) => {
                for addr in addrs {
                    let Some(left) = time_left(deadline) else {
                        break;
                    };
                    match TcpStream::connect_timeout(&addr, left.min(Duration::from_secs(2))) {
                        Ok(stream) => {
                            let _ = stream.set_nodelay(true);
                            return Ok(stream);
                        }
                        Err(e) => last = format!("{addr}: {e}"),
                    }
                }
            }
            Err(e) => last = format!("cannot resolve the name: {e}"),
        }
        match time_left(deadline) {
            Some(left) => std::thread::sleep(backoff.min(left)),
            None => return Err(last),
        }
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

fn describe(e: &LinkError) -> String {
    match e {
        LinkError::Closed(detail) | LinkError::Protocol(detail) => detail.clone(),
        LinkError::TimedOut => "timed out".into(),
        LinkError::Aborted { reason, .. } => reason.clone(),
    }
}

fn write_message<T: Serialize>(
    stream: &mut TcpStream,
    msg: &T,
    deadline: Instant,
) -> Result<(), LinkError> {
    let body = serde_json::to_vec(msg).map_err(|e| LinkError::Protocol(e.to_string()))?;
    write_full(
        stream,
        &[&(body.len() as u32).to_le_bytes(), &body],
        deadline,
    )
}

fn read_message<T: for<'de> Deserialize<'de>>(
    stream: &mut TcpStream,
    deadline: Instant,
) -> Result<T, LinkError> {
    let mut len = [0u8; 4];
    read_full(stream, &mut len, deadline)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_MESSAGE_BYTES {
        return Err(LinkError::Protocol(format!("message of {len} bytes")));
    }
    let mut body = vec![0u8; len];
    read_full(stream, &mut body, deadline)?;
    serde_json::from_slice(&body).map_err(|e| LinkError::Protocol(e.to_string()))
}

/// A run id that differs between runs: std's per-process random hash keys, mixed with the clock
/// and the process id.
fn random_session() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}
