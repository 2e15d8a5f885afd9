//! Background shard preparation: a small, bounded pool of threads that downloads (or
//! decompresses) the shards the loader will need next, so the hot loop only memory-maps.
//!
//! The loader asks for the shards of the samples up to `predownload` positions ahead of where
//! it reads (streaming's `predownload`); each shard is asked for once while it is pending. A
//! failure here is not fatal: the loader prepares the shard itself when it gets there and
//! reports the error then, with its path.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::cache::Cache;

/// A pool of prefetch threads bound to one cache.
pub(crate) struct Prefetcher {
    tx: Option<Sender<usize>>,
    threads: Vec<JoinHandle<()>>,
    pending: HashSet<usize>,
    stop: Arc<AtomicBool>,
}

impl Prefetcher {
    /// Start `threads` workers (at least one).
    pub(crate) fn new(cache: Arc<Cache>, threads: usize) -> Prefetcher {
        let (tx, rx) = channel::<usize>();
        let rx = Arc::new(Mutex::new(rx));
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads.max(1))
            .filter_map(|k| {
                let (cache, rx, stop) = (cache.clone(), rx.clone(), stop.clone());
                std::thread::Builder::new()
                    .name(format!("tessera-prefetch-{k}"))
                    .spawn(move || worker(&cache, &rx, &stop))
                    // Failing to spawn only loses background speed; the loader fetches itself.
                    .ok()
            })
            .collect();
        Prefetcher {
            tx: Some(tx),
            threads,
            pending: HashSet::new(),
            stop,
        }
    }

    /// Ask for shard `i` unless it was already asked for.
    pub(crate) fn request(&mut self, i: usize) {
        if self.threads.is_empty() || !self.pending.insert(i) {
            return;
        }
        if let Some(tx) = &self.tx {
            let _ = tx.send(i);
        }
    }

    /// The loader has opened shard `i`; a later need (after eviction) may ask again.
    pub(crate) fn opened(&mut self, i: usize) {
        self.pending.remove(&i);
    }
}

fn worker(cache: &Cache, rx: &Mutex<Receiver<usize>>, stop: &AtomicBool) {
    loop {
        let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
        match next {
            Ok(_) if stop.load(Ordering::Relaxed) => return,
            Ok(i) => {
                let _ = cache.prefetch(i);
            }
            Err(_) => return,
        }
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        // Workers finish the shard in hand (a half-written download is never visible) and drop
        // the rest of the queue.
        self.stop.store(true, Ordering::Relaxed);
        self.tx = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
