//! The full mesh: one TCP connection between every pair of ranks, built right after the
//! rendezvous. Rank `i` connects to every lower rank and accepts every higher one; each
//! connection opens with the run's session id and the connecting rank, so a stale process of
//! another run cannot slip in.

use std::io;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::error::DistError;
use crate::rendezvous::Rendezvous;
use crate::wire::{read_full, time_left, write_full};

const MESH_MAGIC: [u8; 4] = *b"TSRM";
const HELLO_BYTES: usize = 4 + 8 + 4;

/// Builds the mesh before `deadline`. Returns one stream per rank (`None` at this rank).
pub(crate) fn connect_mesh(
    rdv: &Rendezvous,
    deadline: Instant,
    timeout: Duration,
) -> Result<Vec<Option<TcpStream>>, DistError> {
    let me = rdv.rank;
    let mut links: Vec<Option<TcpStream>> = (0..rdv.world_size).map(|_| None).collect();

    // Lower ranks' listeners are already bound (they were before the peer table went out), so
    // the handshake completes even before they call accept.
    for (peer, addr) in rdv.peers.iter().enumerate().take(me) {
        let mut stream = connect_until(*addr, deadline).map_err(|e| DistError::MeshIncomplete {
            missing: vec![peer],
            detail: format!("cannot be reached at its data address {addr}: {e}"),
            timeout,
        })?;
        let mut hello = [0u8; HELLO_BYTES];
        hello[..4].copy_from_slice(&MESH_MAGIC);
        hello[4..12].copy_from_slice(&rdv.session.to_le_bytes());
        hello[12..].copy_from_slice(&(me as u32).to_le_bytes());
        write_full(&mut stream, &[&hello], deadline).map_err(|_| DistError::MeshIncomplete {
            missing: vec![peer],
            detail: format!("dropped the connection from rank {me}"),
            timeout,
        })?;
        links[peer] = Some(stream);
    }

    let listener = &rdv.data_listener;
    listener
        .set_nonblocking(true)
        .map_err(|e| DistError::io("data listener", e))?;
    let mut waiting = rdv.world_size - 1 - me;
    while waiting > 0 {
        let mut stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if time_left(deadline).is_none() {
                    let missing = (me + 1..rdv.world_size)
                        .filter(|r| links[*r].is_none())
                        .collect();
                    return Err(DistError::MeshIncomplete {
                        missing,
                        detail: format!("did not connect to rank {me}"),
                        timeout,
                    });
                }
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(DistError::io("data listener accept", e)),
        };
        if stream.set_nonblocking(false).is_err() {
            continue;
        }
        let mut hello = [0u8; HELLO_BYTES];
        let hello_deadline = deadline.min(Instant::now() + Duration::from_secs(10));
        if read_full(&mut stream, &mut hello, hello_deadline).is_err()
            || hello[..4] != MESH_MAGIC
            || hello[4..12] != rdv.session.to_le_bytes()
        {
            continue; // not a rank of this run
        }
        let peer = u32::from_le_bytes(hello[12..].try_into().expect("4 bytes")) as usize;
        if peer <= me || peer >= rdv.world_size || links[peer].is_some() {
            continue;
        }
        let _ = stream.set_nodelay(true);
        links[peer] = Some(stream);
        waiting -= 1;
    }
    Ok(links)
}

fn connect_until(addr: std::net::SocketAddr, deadline: Instant) -> io::Result<TcpStream> {
    let mut backoff = Duration::from_millis(10);
    loop {
        let left = time_left(deadline)
            .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "deadline passed"))?;
        match TcpStream::connect_timeout(&addr, left.min(Duration::from_secs(2))) {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(e) if time_left(deadline).is_none() => return Err(e),
            Err(_) => std::thread::sleep(backoff),
        }
        backoff = (backoff * 2).min(Duration::from_millis(500));
    }
}
