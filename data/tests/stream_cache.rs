//! Remote streams through `file://` URLs: on-demand download into a cache folder, hash checks,
//! cache-limit eviction, and many readers (threads and processes) sharing one cache folder.

use std::path::{Path, PathBuf};

use tessera_data::mds::{HashAlgo, MdsWriter, WriterOptions};
use tessera_data::stream::{StreamConfig, StreamError, StreamingConfig, StreamingDataset, World};

/// The fixtures' closed-form tokens: `arange(7i, 7i + 5 + (37i mod 91)) mod 50368`.
fn fixture_tokens(i: i64) -> Vec<u32> {
    let len = 5 + (37 * i) % 91;
    (7 * i..7 * i + len).map(|t| (t % 50368) as u32).collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn remote_config(remote: &Path, cache: &Path) -> StreamingConfig {
    let url = format!("file://{}", remote.display());
    let mut c =
        StreamingConfig::from_streams(vec![StreamConfig::remote(url, Some(cache.to_path_buf()))]);
    c.shuffle = true;
    c.batch_size = 4;
    c
}

/// Reads a whole epoch, checking every sample's tokens; returns the ids read.
fn read_epoch(ds: &StreamingDataset, check: impl Fn(i64, &[u32])) -> Vec<i64> {
    let mut loader = ds.loader(ds.initial_state()).unwrap();
    let mut ids = Vec::new();
    let mut toks = Vec::new();
    while let Some(id) = loader.next_sample_into(&mut toks).unwrap() {
        check(id, &toks);
        toks.clear();
        ids.push(id);
    }
    ids
}

fn files_with(dir: &Path, pred: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| pred(&p.file_name().unwrap().to_string_lossy()))
        .collect();
    v.sort();
    v
}

#[test]
fn stream_file_remote_downloads_decompresses_and_reuses_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let remote = tmp.path().join("remote");
    let cache = tmp.path().join("cache");
    copy_dir(
        &tessera_testkit::repo_fixture("mds/tokens_ndarray_int32_zstd"),
        &remote,
    );
    let ds = StreamingDataset::new(remote_config(&remote, &cache), World::SINGLE).unwrap();
    let mut ids = read_epoch(&ds, |id, t| assert_eq!(t, fixture_tokens(id)));
    ids.sort_unstable();
    assert_eq!(ids, (0..120).collect::<Vec<_>>());
    // Only decompressed shards (and the index) are kept; no temp files are left behind.
    assert_eq!(files_with(&cache, |n| n.ends_with(".mds")).len(), 5);
    assert!(files_with(&cache, |n| n.ends_with(".zstd") || n.contains(".tmp-")).is_empty());
    assert!(cache.join("index.json").exists());

    // A second dataset reads from the cache: it works with the remote's shards gone.
    for f in files_with(&remote, |n| n.starts_with("shard.")) {
        std::fs::remove_file(f).unwrap();
    }
    let again = StreamingDataset::new(remote_config(&remote, &cache), World::SINGLE).unwrap();
    assert_eq!(
        read_epoch(&again, |id, t| assert_eq!(t, fixture_tokens(id))).len(),
        120
    );
}

#[test]
fn stream_corrupt_remote_shard_fails_its_hash_check_and_is_not_cached() {
    let tmp = tempfile::tempdir().unwrap();
    let remote = tmp.path().join("remote");
    let cache = tmp.path().join("cache");
    copy_dir(
        &tessera_testkit::repo_fixture("mds/tokens_ndarray_int32"),
        &remote,
    );
    // Flip one byte inside a sample payload of shard 2 (size unchanged).
    let shard = remote.join("shard.00002.mds");
    let mut bytes = std::fs::read(&shard).unwrap();
    let at = bytes.len() - 10;
    bytes[at] ^= 0x40;
    std::fs::write(&shard, bytes).unwrap();

    let ds = StreamingDataset::new(remote_config(&remote, &cache), World::SINGLE).unwrap();
    let mut loader = ds.loader(ds.initial_state()).unwrap();
    let mut toks = Vec::new();
    let err = loop {
        match loader.next_sample_into(&mut toks) {
            Ok(Some(_)) => toks.clear(),
            Ok(None) => panic!("the corrupt shard was read without error"),
            Err(e) => break e,
        }
    };
    assert!(matches!(err, StreamError::HashMismatch { .. }), "{err}");
    assert!(err.to_string().contains("shard.00002.mds"), "{err}");
    assert!(
        !cache.join("shard.00002.mds").exists(),
        "a bad download must not be cached"
    );
}

/// 24 shards of about 1.3 kB, each sample holding its own id as the first token.
fn write_many_shards(dir: &Path) -> u64 {
    let opts = WriterOptions {
        size_limit: Some(1200),
        hashes: vec![HashAlgo::parse("xxh64", "test").unwrap()],
        ..Default::default()
    };
    let mut w = MdsWriter::create(dir, &[("tokens", "ndarray:int32")], opts).unwrap();
    for i in 0..480u32 {
        w.write_tokens(&(i..i + 8).collect::<Vec<_>>()).unwrap();
    }
    let index = w.finish().unwrap();
    assert!(index.shards.len() >= 20);
    index.shards.iter().map(|s| s.raw_data.bytes).max().unwrap()
}

#[test]
fn stream_cache_limit_evicts_and_stays_under_the_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let remote = tmp.path().join("remote");
    let cache = tmp.path().join("cache");
    let largest = write_many_shards(&remote);
    let mut cfg = remote_config(&remote, &cache);
    let limit = 4 * largest;
    cfg.cache_limit = Some(limit);
    cfg.prefetch_threads = 2;
    let ds = StreamingDataset::new(cfg, World::SINGLE).unwrap();
    let usage = || -> u64 {
        files_with(&cache, |n| n.ends_with(".mds"))
            .iter()
            // A prefetch thread may evict a file between the listing and the stat.
            .filter_map(|p| p.metadata().ok())
            .map(|m| m.len())
            .sum()
    };
    let mut loader = ds.loader(ds.initial_state()).unwrap();
    let mut seen = Vec::new();
    for _ in 0..120 {
        let batch = loader.next_batch().unwrap();
        assert!(usage() <= limit, "cache holds {} > limit {limit}", usage());
        seen.extend(batch.iter().map(|t| t[0]));
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..480).collect::<Vec<u32>>());

    let mut too_small = remote_config(&remote, &tmp.path().join("c2"));
    too_small.cache_limit = Some(largest);
    assert!(matches!(
        StreamingDataset::new(too_small, World::SINGLE),
        Err(StreamError::CacheLimit { .. })
    ));
}

#[test]
fn stream_cache_shared_by_threads_stays_consistent() {
    let tmp = tempfile::tempdir().unwrap();
    let remote = tmp.path().join("remote");
    let cache = tmp.path().join("cache");
    write_many_shards(&remote);
    std::thread::scope(|s| {
        for seed in 0..4u64 {
            let (remote, cache) = (remote.clone(), cache.clone());
            s.spawn(move || {
                let mut cfg = remote_config(&remote, &cache);
                cfg.shuffle_seed = seed;
                let ds = StreamingDataset::new(cfg, World::SINGLE).unwrap();
                let ids = read_epoch(&ds, |id, t| {
                    assert_eq!(t, (id as u32..id as u32 + 8).collect::<Vec<_>>())
                });
                assert_eq!(ids.len(), 480);
            });
        }
    });
    assert!(files_with(&cache, |n| n.contains(".tmp-")).is_empty());
}

const CHILD_ENV: &str = "TESSERA_STREAM_CACHE_CHILD";

/// Run by `stream_cache_shared_by_processes` in child processes; a no-op otherwise.
#[test]
fn stream_cache_child_reader() {
    let Ok(dirs) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (remote, cache) = dirs.split_once('\n').unwrap();
    let ds = StreamingDataset::new(
        remote_config(Path::new(remote), Path::new(cache)),
        World::SINGLE,
    )
    .unwrap();
    let ids = read_epoch(&ds, |id, t| {
        assert_eq!(t, (id as u32..id as u32 + 8).collect::<Vec<_>>())
    });
    assert_eq!(ids.len(), 480);
}

#[test]
fn stream_cache_shared_by_processes() {
    let tmp = tempfile::tempdir().unwrap();
    let remote = tmp.path().join("remote");
    let cache = tmp.path().join("cache");
    write_many_shards(&remote);
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..3)
        .map(|_| {
            std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "stream_cache_child_reader",
                    "--nocapture",
                    "--test-threads",
                    "1",
                ])
                .env(
                    CHILD_ENV,
                    format!("{}\n{}", remote.display(), cache.display()),
                )
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success(), "a child reader failed");
    }
    // Every cached shard is complete and hashes right: read them all with verification on.
    let mut cfg = StreamingConfig::local(&cache);
    cfg.validate_hash = Some(true);
    let ds = StreamingDataset::new(cfg, World::SINGLE).unwrap();
    assert_eq!(
        read_epoch(&ds, |id, t| assert_eq!(t[0], id as u32)).len(),
        480
    );
    assert!(files_with(&cache, |n| n.contains(".tmp-")).is_empty());
}

/// A minimal HTTP/1.1 file server on localhost (one request per connection), for the
/// `https://`/`http://` remote path without any network.
fn serve_dir(dir: PathBuf) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let dir = dir.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut request = String::new();
                reader.read_line(&mut request).unwrap();
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let path = request
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("/")
                    .trim_start_matches('/');
                let reply = match std::fs::read(dir.join(path)) {
                    Ok(body) => {
                        let head = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        );
                        [head.into_bytes(), body].concat()
                    }
                    Err(_) => {
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_vec()
                    }
                };
                let _ = conn.write_all(&reply);
            });
        }
    });
    format!("http://{addr}")
}

#[test]
fn stream_http_remote_streams_through_object_store() {
    let tmp = tempfile::tempdir().unwrap();
    let served = tmp.path().join("served");
    copy_dir(
        &tessera_testkit::repo_fixture("mds/tokens_ndarray_int32"),
        &served.join("train"),
    );
    let url = serve_dir(served);
    let stream = StreamConfig {
        split: Some("train".into()),
        ..StreamConfig::remote(url, Some(tmp.path().join("cache")))
    };
    let mut cfg = StreamingConfig::from_streams(vec![stream]);
    cfg.shuffle = true;
    let ds = StreamingDataset::new(cfg, World::SINGLE).unwrap();
    let mut ids = read_epoch(&ds, |id, t| assert_eq!(t, fixture_tokens(id)));
    ids.sort_unstable();
    assert_eq!(ids, (0..120).collect::<Vec<_>>());
    assert_eq!(
        files_with(&tmp.path().join("cache/train"), |n| n.ends_with(".mds")).len(),
        5
    );
}
