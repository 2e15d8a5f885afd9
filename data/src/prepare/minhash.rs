//! Near-duplicate detection: MinHash signatures over word n-gram shingles, and an LSH index that
//! finds earlier documents sharing a band and confirms them by estimated Jaccard similarity.
//!
//! Signatures are computed in parallel (a pure function of the text and the seed); the index is
//! consulted in document order by one thread, so "which copy survives" (the first) never depends
//! on the worker count. Hashing is xxh3 with fixed seeds, then the classic universal family
//! `(a·h + b) mod (2⁶¹ − 1)` per permutation, so one shingle costs one xxh3 plus cheap arithmetic.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// Parameters of the near-dup stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NearDupConfig {
    /// Words per shingle (5, as in Gopher/RefinedWeb style dedup).
    pub ngram: usize,
    /// LSH bands. A pair with Jaccard `j` becomes a candidate with probability
    /// `1 − (1 − j^rows)^bands`; 16 × 8 catches ~95 % of pairs at j = 0.8.
    pub bands: usize,
    /// Signature rows per band.
    pub rows: usize,
    /// Candidates are duplicates when their estimated Jaccard similarity reaches this.
    pub threshold: f64,
}

impl Default for NearDupConfig {
    fn default() -> Self {
        Self {
            ngram: 5,
            bands: 16,
            rows: 8,
            threshold: 0.8,
        }
    }
}

const MERSENNE_61: u64 = (1 << 61) - 1;

/// Computes MinHash signatures (`bands · rows` values per document).
#[derive(Debug, Clone)]
pub struct MinHasher {
    ngram: usize,
    /// Per-permutation `(a, b)` of `(a·h + b) mod p`, drawn from the seed.
    params: Vec<(u64, u64)>,
}

impl MinHasher {
    /// A hasher for `cfg`, its permutations drawn deterministically from `seed`.
    pub fn new(cfg: &NearDupConfig, seed: u64) -> Self {
        let n = cfg.bands * cfg.rows;
        let params = (0..n as u64)
            .map(|i| {
                let a = xxh3_64_with_seed(&i.to_le_bytes(), seed ^ 0xA5A5) % (MERSENNE_61 - 1) + 1;
                let b = xxh3_64_with_seed(&i.to_le_bytes(), seed ^ 0x5A5A) % MERSENNE_61;
                (a, b)
            })
            .collect();
        Self {
            ngram: cfg.ngram.max(1),
            params,
        }
    }

    /// The signature of `text` (words are its lowercased whitespace-separated tokens), or `None`
    /// when it has no words. A text shorter than one shingle is one shingle of all its words.
    pub fn signature(&self, text: &str) -> Option<Vec<u32>> {
        let words: Vec<u64> = text
            .split_whitespace()
            .map(|w| {
                if w.bytes().any(|b| b.is_ascii_uppercase() || b >= 0x80) {
                    xxh3_64(w.to_lowercase().as_bytes())
                } else {
                    xxh3_64(w.as_bytes())
                }
            })
            .collect();
        if words.is_empty() {
            return None;
        }
        let mut mins = vec![u64::MAX; self.params.len()];
        let n = self.ngram.min(words.len());
        for window in words.windows(n) {
            let h = xxh3_64(bytemuck::cast_slice(window)) % MERSENNE_61;
            for (m, &(a, b)) in mins.iter_mut().zip(&self.params) {
                let v = ((a as u128 * h as u128 + b as u128) % MERSENNE_61 as u128) as u64;
                if v < *m {
                    *m = v;
                }
            }
        }
        // The low 32 bits keep equality comparisons meaningful (false matches ~2⁻³²) at half the
        // memory the index needs per kept document.
        Some(mins.into_iter().map(|m| m as u32).collect())
    }
}

const END: u32 = u32::MAX;

/// The LSH index over the documents kept so far.
#[derive(Debug)]
pub struct LshIndex {
    bands: usize,
    rows: usize,
    threshold: f64,
    /// Band key → the most recent kept document in that bucket.
    heads: HashMap<u64, u32>,
    /// `next[doc · bands + band]`: the previous document in the same bucket (a chained list
    /// without one allocation per bucket).
    next: Vec<u32>,
    /// Signatures of kept documents, `bands · rows` each, flat.
    sigs: Vec<u32>,
}

impl LshIndex {
    /// An empty index for `cfg`.
    pub fn new(cfg: &NearDupConfig) -> Self {
        Self {
            bands: cfg.bands,
            rows: cfg.rows,
            threshold: cfg.threshold,
            heads: HashMap::new(),
            next: Vec::new(),
            sigs: Vec::new(),
        }
    }

    fn band_key(&self, band: usize, sig: &[u32]) -> u64 {
        let part = &sig[band * self.rows..(band + 1) * self.rows];
        xxh3_64_with_seed(bytemuck::cast_slice(part), band as u64)
    }

    fn similarity(&self, doc: u32, sig: &[u32]) -> f64 {
        let n = self.bands * self.rows;
        let other = &self.sigs[doc as usize * n..(doc as usize + 1) * n];
        let equal = other.iter().zip(sig).filter(|(a, b)| a == b).count();
        equal as f64 / n as f64
    }

    /// True when `sig` is a near-duplicate of a document already kept; otherwise records it as
    /// kept and returns false.
    ///
    /// # Panics
    /// If `sig` does not have `bands · rows` values (a programmer error: it must come from a
    /// [`MinHasher`] built from the same config).
    pub fn check_and_insert(&mut self, sig: &[u32]) -> bool {
        assert_eq!(sig.len(), self.bands * self.rows, "signature length");
        let keys: Vec<u64> = (0..self.bands).map(|b| self.band_key(b, sig)).collect();
        for (band, key) in keys.iter().enumerate() {
            let mut doc = self.heads.get(key).copied().unwrap_or(END);
            while doc != END {
                if self.similarity(doc, sig) >= self.threshold {
                    return true;
                }
                doc = self.next[doc as usize * self.bands + band];
            }
        }
        let id = (self.sigs.len() / (self.bands * self.rows)) as u32;
        self.sigs.extend_from_slice(sig);
        for &key in &keys {
            let prev = self.heads.insert(key, id).unwrap_or(END);
            self.next.push(prev);
        }
        false
    }

    /// Number of documents kept in the index.
    pub fn len(&self) -> usize {
        self.sigs.len() / (self.bands * self.rows).max(1)
    }

    /// True when no document has been kept yet.
    pub fn is_empty(&self) -> bool {
        self.sigs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(n: usize, salt: &str) -> Vec<String> {
        (0..n)
            .map(|i| format!("w{}{salt}", xxh3_64(format!("{i}{salt}").as_bytes()) % 5000))
            .collect()
    }

    /// The exact Jaccard similarity of two texts' 5-word shingle sets, computed directly.
    fn exact_jaccard(a: &str, b: &str) -> f64 {
        let sh = |t: &str| {
            let w: Vec<&str> = t.split_whitespace().collect();
            w.windows(5)
                .map(|x| x.join(" "))
                .collect::<std::collections::HashSet<_>>()
        };
        let (x, y) = (sh(a), sh(b));
        x.intersection(&y).count() as f64 / x.union(&y).count() as f64
    }

    #[test]
    fn signature_agreement_estimates_jaccard() {
        let cfg = NearDupConfig::default();
        let hasher = MinHasher::new(&cfg, 1);
        let base = words(400, "a");
        let mut edited = base.clone();
        for i in (0..400).step_by(40) {
            edited[i] = format!("edit{i}");
        }
        let (a, b) = (base.join(" "), edited.join(" "));
        let truth = exact_jaccard(&a, &b);
        let (sa, sb) = (hasher.signature(&a).unwrap(), hasher.signature(&b).unwrap());
        let est = sa.iter().zip(&sb).filter(|(x, y)| x == y).count() as f64 / sa.len() as f64;
        assert!(
            (est - truth).abs() < 0.12,
            "estimate {est} vs exact {truth}"
        );
    }

    #[test]
    fn index_drops_near_copies_keeps_distinct_texts() {
        let cfg = NearDupConfig::default();
        let hasher = MinHasher::new(&cfg, 0);
        let mut index = LshIndex::new(&cfg);
        let base = words(500, "x");
        let mut near = base.clone();
        near[250] = "changed".into(); // one word in 500: Jaccard ≈ 0.98
        let other = words(500, "y");
        let doc = |w: &Vec<String>| hasher.signature(&w.join(" ")).unwrap();
        assert!(!index.check_and_insert(&doc(&base)));
        assert!(
            index.check_and_insert(&doc(&near)),
            "near copy must be dropped"
        );
        assert!(
            !index.check_and_insert(&doc(&other)),
            "distinct text must be kept"
        );
        assert_eq!(index.len(), 2);
        // Case and whitespace do not matter to shingles.
        let shouted = base.join("\n").to_uppercase();
        assert!(index.check_and_insert(&hasher.signature(&shouted).unwrap()));
    }

    #[test]
    fn texts_below_threshold_are_both_kept() {
        let cfg = NearDupConfig::default();
        let hasher = MinHasher::new(&cfg, 0);
        let mut index = LshIndex::new(&cfg);
        let base = words(300, "z");
        let mut half = base.clone();
        for w in half.iter_mut().skip(150) {
            w.push('!');
        }
        assert!(exact_jaccard(&base.join(" "), &half.join(" ")) < 0.5);
        assert!(!index.check_and_insert(&hasher.signature(&base.join(" ")).unwrap()));
        assert!(!index.check_and_insert(&hasher.signature(&half.join(" ")).unwrap()));
    }

    #[test]
    fn signature_is_deterministic_and_seeded() {
        let cfg = NearDupConfig {
            bands: 4,
            rows: 2,
            ..Default::default()
        };
        let t = "one two three four five six seven";
        assert_eq!(
            MinHasher::new(&cfg, 3).signature(t),
            MinHasher::new(&cfg, 3).signature(t)
        );
        assert_ne!(
            MinHasher::new(&cfg, 3).signature(t),
            MinHasher::new(&cfg, 4).signature(t)
        );
        assert_eq!(MinHasher::new(&cfg, 3).signature("  \n "), None);
        assert_eq!(
            MinHasher::new(&cfg, 3).signature("short").map(|s| s.len()),
            Some(8)
        );
    }
}
