//! Packing token streams into fixed-length samples, with llm-foundry's `ConcatTokensDataset`
//! semantics (`llmfoundry/data/data.py`):
//!
//! - each document contributes `[BOS] ids [EOS]` (BOS only when set) to one running buffer;
//! - whenever the buffer holds `seq_len` tokens, its first `seq_len` become a sample;
//! - with `wrap` (llm-foundry's default) the rest carries over into the next sample, without it
//!   (`--no_wrap`) the rest is discarded;
//! - no padding: the final partial sample is dropped.

/// Packs documents into `seq_len` samples.
#[derive(Debug, Clone)]
pub struct Packer {
    seq_len: usize,
    bos: Option<u32>,
    eos: Option<u32>,
    wrap: bool,
    buf: Vec<u32>,
    /// Tokens received, BOS/EOS included.
    tokens_in: u64,
    /// Tokens discarded by `wrap = false`.
    discarded: u64,
    samples: u64,
}

/// What a finished packer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PackStats {
    /// Tokens received (document tokens plus BOS/EOS).
    pub tokens_in: u64,
    /// Samples emitted.
    pub samples: u64,
    /// Tokens not written: the final partial sample plus, without wrap, every remainder.
    pub tokens_dropped: u64,
}

impl Packer {
    /// A packer for `seq_len` samples.
    ///
    /// # Panics
    /// If `seq_len` is 0 (the config validation rejects it first).
    pub fn new(seq_len: usize, bos: Option<u32>, eos: Option<u32>, wrap: bool) -> Self {
        assert!(seq_len > 0, "seq_len must be positive");
        Self {
            seq_len,
            bos,
            eos,
            wrap,
            buf: Vec::with_capacity(2 * seq_len),
            tokens_in: 0,
            discarded: 0,
            samples: 0,
        }
    }

    /// Adds one document and calls `emit` for every sample it completes, in order.
    pub fn push<E>(
        &mut self,
        ids: &[u32],
        mut emit: impl FnMut(&[u32]) -> Result<(), E>,
    ) -> Result<(), E> {
        let (bos, eos) = (self.bos, self.eos);
        let parts = [bos.as_slice(), ids, eos.as_slice()];
        let total: usize = parts.iter().map(|p| p.len()).sum();
        self.tokens_in += total as u64;
        let mut consumed = 0usize;
        for mut part in parts {
            // Fill the buffer up to one sample at a time; whole samples inside a long document
            // are emitted straight from its ids without copying.
            while !part.is_empty() {
                let take = if self.buf.is_empty() && part.len() >= self.seq_len {
                    emit(&part[..self.seq_len])?;
                    self.seq_len
                } else {
                    let take = (self.seq_len - self.buf.len()).min(part.len());
                    self.buf.extend_from_slice(&part[..take]);
                    if self.buf.len() < self.seq_len {
                        consumed += take;
                        part = &part[take..];
                        continue;
                    }
                    emit(&self.buf)?;
                    self.buf.clear();
                    take
                };
                self.samples += 1;
                consumed += take;
                part = &part[take..];
                if !self.wrap {
                    // llm-foundry empties its buffer after each sample without wrap: the rest of
                    // this document (EOS included) is thrown away.
                    self.discarded += (total - consumed) as u64;
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Ends packing: the buffered partial sample is dropped (no padding).
    pub fn finish(self) -> PackStats {
        PackStats {
            tokens_in: self.tokens_in,
            samples: self.samples,
            tokens_dropped: self.discarded + self.buf.len() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The llm-foundry loop, transcribed literally (list concatenation and slicing), as the
    /// reference the packer must match.
    fn reference(
        docs: &[Vec<u32>],
        l: usize,
        bos: Option<u32>,
        eos: Option<u32>,
        wrap: bool,
    ) -> Vec<Vec<u32>> {
        let mut out = Vec::new();
        let mut buffer: Vec<u32> = Vec::new();
        for d in docs {
            buffer.extend(bos);
            buffer.extend(d);
            buffer.extend(eos);
            while buffer.len() >= l {
                out.push(buffer[..l].to_vec());
                buffer = if wrap {
                    buffer[l..].to_vec()
                } else {
                    Vec::new()
                };
            }
        }
        out
    }

    fn pack(
        docs: &[Vec<u32>],
        l: usize,
        bos: Option<u32>,
        eos: Option<u32>,
        wrap: bool,
    ) -> (Vec<Vec<u32>>, PackStats) {
        let mut p = Packer::new(l, bos, eos, wrap);
        let mut out = Vec::new();
        for d in docs {
            p.push::<()>(d, |s| {
                out.push(s.to_vec());
                Ok(())
            })
            .unwrap();
        }
        (out, p.finish())
    }

    fn docs(seed: u64) -> Vec<Vec<u32>> {
        // Lengths 0..40 including empty docs and docs longer than several samples.
        (0..30u64)
            .map(|i| {
                let n = ((i * 7 + seed * 13) % 41) as usize;
                (0..n as u32).map(|t| 100 + t + i as u32 * 1000).collect()
            })
            .collect()
    }

    #[test]
    fn matches_llm_foundry_concat_for_every_option() {
        for seed in 0..4 {
            let d = docs(seed);
            for l in [1, 2, 5, 8, 16, 33] {
                for (bos, eos) in [(None, Some(0)), (Some(1), Some(0)), (Some(1), None)] {
                    for wrap in [true, false] {
                        let (got, stats) = pack(&d, l, bos, eos, wrap);
                        assert_eq!(
                            got,
                            reference(&d, l, bos, eos, wrap),
                            "l={l} bos={bos:?} eos={eos:?} wrap={wrap}"
                        );
                        let total: u64 = d.iter().map(|x| x.len() as u64).sum::<u64>()
                            + d.len() as u64 * (bos.is_some() as u64 + eos.is_some() as u64);
                        assert_eq!(stats.tokens_in, total);
                        assert_eq!(stats.samples as usize, got.len());
                        assert_eq!(
                            stats.tokens_in,
                            stats.samples * l as u64 + stats.tokens_dropped
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn eos_follows_each_document_and_the_tail_is_dropped() {
        let (got, stats) = pack(&[vec![5, 6], vec![7], vec![8, 9]], 3, None, Some(0), true);
        assert_eq!(got, vec![vec![5, 6, 0], vec![7, 0, 8]]);
        assert_eq!(stats.tokens_dropped, 2); // [9, 0] never fills a sample
    }
}
