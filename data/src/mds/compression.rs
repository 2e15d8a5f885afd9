//! Shard compression, named and levelled as `streaming/base/compression.py` names them.
//!
//! Streaming's table: `br` (levels 0..=11, default 11), `bz2` (1..=9, default 9), `gz` (0..=9,
//! default 9), `snappy` (no levels; python-snappy's raw block format, not the framed one) and
//! `zstd` (1..=22, default 3). A name is `family` or `family:level`; the file extension is the
//! family. Each file is one frame/stream of that format.
//!
//! Byte-identity with streaming: zstd uses the same libzstd (1.5.7) and one-shot
//! `ZSTD_compress`, so its output matches python-zstd; gz output cannot match (Python stamps the
//! current time into the header; tessera writes mtime 0 so its own output is deterministic), and
//! bz2/br/snappy match only insofar as the Rust codecs match the C ones. Decompression accepts
//! any conforming stream, so every file streaming writes reads back.

use std::fmt;
use std::io::{Read, Write};
use std::path::Path;

use super::error::{MdsError, Result};

/// A compression family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CompressionAlgo {
    /// `br`.
    Brotli,
    /// `bz2`.
    Bzip2,
    /// `gz`.
    Gzip,
    /// `snappy`.
    Snappy,
    /// `zstd`.
    Zstd,
}

impl CompressionAlgo {
    /// Streaming's name, which is also the file extension.
    pub fn name(self) -> &'static str {
        match self {
            CompressionAlgo::Brotli => "br",
            CompressionAlgo::Bzip2 => "bz2",
            CompressionAlgo::Gzip => "gz",
            CompressionAlgo::Snappy => "snappy",
            CompressionAlgo::Zstd => "zstd",
        }
    }

    /// Valid levels, and the level used when none is given.
    fn levels(self) -> Option<(std::ops::RangeInclusive<u8>, u8)> {
        match self {
            CompressionAlgo::Brotli => Some((0..=11, 11)),
            CompressionAlgo::Bzip2 => Some((1..=9, 9)),
            CompressionAlgo::Gzip => Some((0..=9, 9)),
            CompressionAlgo::Snappy => None,
            CompressionAlgo::Zstd => Some((1..=22, 3)),
        }
    }
}

/// A compression setting: family plus an optional explicit level (kept so that `zstd` and
/// `zstd:3` round-trip to the same string in `index.json`, as streaming records the user's text).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Compression {
    /// The algorithm.
    pub algo: CompressionAlgo,
    /// The level as written (`zstd:7`), or `None` for the algorithm's default.
    pub level: Option<u8>,
}

const EXPECTED: &str =
    "br, bz2, gz, snappy or zstd, optionally :level (br 0-11, bz2 1-9, gz 0-9, zstd 1-22)";

impl Compression {
    /// `zstd` at its default level 3.
    pub const ZSTD: Compression = Compression {
        algo: CompressionAlgo::Zstd,
        level: None,
    };

    /// Parses a streaming compression name (`zstd`, `zstd:7`, `gz:1`, `snappy`...). `origin` names
    /// where the text came from, for the error.
    pub fn parse(text: &str, origin: &str) -> Result<Compression> {
        let err = || MdsError::UnknownCompression {
            origin: origin.to_string(),
            name: text.to_string(),
            expected: EXPECTED,
        };
        let (family, level) = match text.split_once(':') {
            Some((f, l)) => (f, Some(l)),
            None => (text, None),
        };
        let algo = [
            CompressionAlgo::Brotli,
            CompressionAlgo::Bzip2,
            CompressionAlgo::Gzip,
            CompressionAlgo::Snappy,
            CompressionAlgo::Zstd,
        ]
        .into_iter()
        .find(|a| a.name() == family)
        .ok_or_else(err)?;
        let level = match level {
            None => None,
            Some(l) => {
                let (range, _) = algo.levels().ok_or_else(err)?;
                let v: u8 = l.parse().map_err(|_| err())?;
                // Streaming's table keys are `f"{ext}:{level}"`, so `zstd:07` is not a name.
                if !range.contains(&v) || v.to_string() != l {
                    return Err(err());
                }
                Some(v)
            }
        };
        Ok(Compression { algo, level })
    }

    /// The level actually used (the family default when none was given; 0 for snappy).
    pub fn effective_level(&self) -> u8 {
        self.level
            .or(self.algo.levels().map(|(_, d)| d))
            .unwrap_or(0)
    }

    /// The extension appended to the raw basename: `shard.00000.mds.<ext>`.
    pub fn extension(&self) -> &'static str {
        self.algo.name()
    }

    /// Compresses a whole shard.
    pub fn compress(&self, data: &[u8]) -> std::io::Result<Vec<u8>> {
        let level = self.effective_level();
        match self.algo {
            // One-shot ZSTD_compressCCtx, like python-zstd: the frame records the content size.
            CompressionAlgo::Zstd => zstd::bulk::compress(data, level as i32),
            CompressionAlgo::Gzip => {
                let mut enc = flate2::GzBuilder::new()
                    .mtime(0)
                    .write(Vec::new(), flate2::Compression::new(level as u32));
                enc.write_all(data)?;
                enc.finish()
            }
            CompressionAlgo::Bzip2 => {
                let mut enc =
                    bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::new(level as u32));
                enc.write_all(data)?;
                enc.finish()
            }
            CompressionAlgo::Brotli => {
                let mut out = Vec::new();
                {
                    // Python brotli.compress defaults: quality 11, lgwin 22, generic mode.
                    let mut w = brotli::CompressorWriter::new(&mut out, 1 << 16, level as u32, 22);
                    w.write_all(data)?;
                    w.flush()?;
                }
                Ok(out)
            }
            CompressionAlgo::Snappy => snap::raw::Encoder::new()
                .compress_vec(data)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e)),
        }
    }

    /// Decompresses a shard file that must expand to exactly `expected_len` bytes (the index's
    /// `raw_data.bytes`). Reads at most one byte past it, so a corrupt or hostile file cannot make
    /// tessera inflate more than the index promised.
    pub fn decompress(&self, data: &[u8], expected_len: u64, path: &Path) -> Result<Vec<u8>> {
        let fail = |reason: String| MdsError::Decompress {
            path: path.to_path_buf(),
            algo: self.algo.name().to_string(),
            reason,
        };
        // MDS offsets are u32, so no valid shard is 4 GiB or more.
        if expected_len > u32::MAX as u64 {
            return Err(fail(format!(
                "index claims {expected_len} decompressed bytes, over 4 GiB"
            )));
        }
        let limit = expected_len + 1;
        let mut out = Vec::with_capacity(expected_len as usize);
        let read = |r: &mut dyn Read, out: &mut Vec<u8>| -> std::result::Result<(), String> {
            r.take(limit)
                .read_to_end(out)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        match self.algo {
            CompressionAlgo::Zstd => {
                let mut dec = zstd::stream::read::Decoder::with_buffer(data)
                    .map_err(|e| fail(e.to_string()))?
                    .single_frame();
                read(&mut dec, &mut out).map_err(fail)?;
            }
            CompressionAlgo::Gzip => {
                read(&mut flate2::read::MultiGzDecoder::new(data), &mut out).map_err(fail)?
            }
            CompressionAlgo::Bzip2 => {
                read(&mut bzip2::read::MultiBzDecoder::new(data), &mut out).map_err(fail)?
            }
            CompressionAlgo::Brotli => {
                read(&mut brotli::Decompressor::new(data, 1 << 16), &mut out).map_err(fail)?
            }
            CompressionAlgo::Snappy => {
                let n = snap::raw::decompress_len(data).map_err(|e| fail(e.to_string()))?;
                if n as u64 != expected_len {
                    return Err(MdsError::ShardSize {
                        path: path.to_path_buf(),
                        what: "decompressed data",
                        found: n as u64,
                        expected: expected_len,
                    });
                }
                out = snap::raw::Decoder::new()
                    .decompress_vec(data)
                    .map_err(|e| fail(e.to_string()))?;
            }
        }
        if out.len() as u64 != expected_len {
            return Err(MdsError::ShardSize {
                path: path.to_path_buf(),
                what: "decompressed data",
                found: out.len() as u64,
                expected: expected_len,
            });
        }
        Ok(out)
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.level {
            Some(l) => write!(f, "{}:{l}", self.algo.name()),
            None => f.write_str(self.algo.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_levels_follow_streamings_table() {
        for ok in [
            "zstd", "zstd:1", "zstd:7", "zstd:22", "gz", "gz:0", "bz2:1", "br:11", "br:0", "snappy",
        ] {
            assert_eq!(Compression::parse(ok, "t").unwrap().to_string(), ok);
        }
        for bad in [
            "zstd:0", "zstd:23", "zstd:07", "gz:10", "bz2:0", "snappy:1", "lz4", "", "zstd:",
        ] {
            assert!(Compression::parse(bad, "t").is_err(), "{bad}");
        }
        assert_eq!(
            Compression::parse("zstd", "t").unwrap().effective_level(),
            3
        );
        assert_eq!(Compression::parse("br", "t").unwrap().effective_level(), 11);
    }

    #[test]
    fn every_family_round_trips_and_checks_the_length() {
        let data: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for name in ["zstd", "zstd:19", "gz", "gz:1", "bz2", "br:5", "snappy"] {
            let c = Compression::parse(name, "t").unwrap();
            let z = c.compress(&data).unwrap();
            let p = Path::new("x");
            assert_eq!(
                c.decompress(&z, data.len() as u64, p).unwrap(),
                data,
                "{name}"
            );
            assert!(
                c.decompress(&z, data.len() as u64 - 1, p).is_err(),
                "{name}: short limit"
            );
            assert!(
                c.decompress(&z, data.len() as u64 + 1, p).is_err(),
                "{name}: long limit"
            );
            assert!(
                c.decompress(&z[..z.len() / 2], data.len() as u64, p)
                    .is_err(),
                "{name}: cut"
            );
        }
    }
}
