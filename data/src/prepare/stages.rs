//! The per-document work: decode, clean, route, filter, scrub, sign and tokenize. Everything here
//! is a pure function of one record and the settings, so it runs on any worker in any order; the
//! order-dependent decisions (dedup) live in `pipeline`.

use std::borrow::Cow;

use super::PrepareError;
use super::clean::{Utf8Mode, Utf8Outcome, decode_utf8, normalized_key, slice_of, strip_control};
use super::config::PrepareConfig;
use super::input::{InputFile, RawBatch, RawRecord};
use super::minhash::MinHasher;
use super::pii::{PiiCounts, PiiScrubber};
use super::quality;
use super::record::extract_text;
use crate::tokenizer::Tokenizer;
use xxhash_rust::xxh3::xxh3_128;

/// Compiled settings shared by the workers.
pub struct Stages<'a> {
    pub cfg: &'a PrepareConfig,
    pub files: &'a [InputFile],
    pub tokenizer: &'a Tokenizer,
    pub scrubber: Option<PiiScrubber>,
    pub minhasher: Option<MinHasher>,
    /// Tokenize in the first parallel pass (no dedup stage needs the documents in order first).
    pub tokenize_early: bool,
}

/// One record after the parallel pass.
pub enum Analyzed<'b> {
    /// Yielded no document: counted and reported with file:line.
    Bad {
        file: u32,
        line: u64,
        reason: String,
    },
    /// Belongs to another `--slice`.
    OtherSlice,
    /// Dropped by a cleaning stage.
    Dropped { reason: &'static str, edits: Edits },
    /// A candidate document.
    Doc(Doc<'b>),
}

/// What the cleaning stages changed in a document.
#[derive(Debug, Clone, Copy, Default)]
pub struct Edits {
    pub utf8_repaired: bool,
    pub control_stripped: bool,
    pub pii: PiiCounts,
}

/// A document that survived the per-document stages.
pub struct Doc<'b> {
    pub file: u32,
    pub line: u64,
    pub text: Cow<'b, str>,
    /// Normalized-text key (exact dedup, split routing); 0 when nothing needs it.
    pub key: u128,
    /// MinHash signature when near-dedup is on (`None` also for a text without words).
    pub sig: Option<Vec<u32>>,
    /// Token ids, when tokenized in this pass.
    pub ids: Option<Vec<u32>>,
    pub edits: Edits,
}

impl Stages<'_> {
    /// Runs the per-document stages on one record of `batch`.
    pub fn analyze<'b>(
        &self,
        batch: &'b RawBatch,
        r: &RawRecord,
    ) -> Result<Analyzed<'b>, PrepareError> {
        let clean = &self.cfg.clean;
        let mut edits = Edits::default();
        if r.null {
            return Ok(Analyzed::Bad {
                file: r.file,
                line: r.line,
                reason: "text is null".into(),
            });
        }
        let bytes = batch.bytes(r);
        let text: Cow<'b, str> = if r.json {
            match std::str::from_utf8(bytes) {
                Ok(_) => match extract_text(bytes, &self.cfg.text_field) {
                    Ok(t) => t,
                    Err(e) => {
                        return Ok(Analyzed::Bad {
                            file: r.file,
                            line: r.line,
                            reason: e.to_string(),
                        });
                    }
                },
                Err(_) if clean.utf8 == Utf8Mode::Drop => {
                    return Ok(self.invalid_utf8(bytes, edits));
                }
                Err(_) => {
                    edits.utf8_repaired = true;
                    let repaired = String::from_utf8_lossy(bytes);
                    match extract_text(repaired.as_bytes(), &self.cfg.text_field) {
                        Ok(t) => Cow::Owned(t.into_owned()),
                        Err(e) => {
                            return Ok(Analyzed::Bad {
                                file: r.file,
                                line: r.line,
                                reason: e.to_string(),
                            });
                        }
                    }
                }
            }
        } else {
            match decode_utf8(bytes, clean.utf8) {
                Utf8Outcome::Valid(s) => Cow::Borrowed(s),
                Utf8Outcome::Repaired(s) => {
                    edits.utf8_repaired = true;
                    Cow::Owned(s)
                }
                Utf8Outcome::Invalid => return Ok(self.invalid_utf8(bytes, edits)),
            }
        };
        let mut text = text;
        if clean.strip_control {
            let stripped = match strip_control(&text) {
                Cow::Owned(s) => Some(s),
                Cow::Borrowed(_) => None,
            };
            if let Some(s) = stripped {
                edits.control_stripped = true;
                text = Cow::Owned(s);
            }
        }
        // The normalized-text key costs a pass over the text: only computed when something
        // routes or dedups on it.
        let needs_key =
            self.cfg.slice.is_some() || self.cfg.val_fraction > 0.0 || clean.exact_dedup;
        let key = if needs_key { normalized_key(&text) } else { 0 };
        if let Some(slice) = self.cfg.slice
            && slice_of(key, self.cfg.seed, slice.count) != slice.index
        {
            return Ok(Analyzed::OtherSlice);
        }
        if let Some(q) = &clean.quality
            && let Err(fail) = quality::check(&text, q)
        {
            return Ok(Analyzed::Dropped {
                reason: fail.reason(),
                edits,
            });
        }
        if let Some(scrubber) = &self.scrubber {
            let (out, counts) = scrubber.scrub(&text);
            edits.pii = counts;
            let scrubbed = match out {
                Cow::Owned(o) => Some(o),
                Cow::Borrowed(_) => None,
            };
            if let Some(o) = scrubbed {
                text = Cow::Owned(o);
            }
        }
        let sig = self.minhasher.as_ref().and_then(|m| m.signature(&text));
        let ids = if self.tokenize_early {
            Some(self.encode(&text, r.file, r.line)?)
        } else {
            None
        };
        Ok(Analyzed::Doc(Doc {
            file: r.file,
            line: r.line,
            text,
            key,
            sig,
            ids,
            edits,
        }))
    }

    /// A document dropped for invalid UTF-8. It has no text to route on, so its slice comes
    /// from its raw bytes: each slice counts only its own share of these drops.
    fn invalid_utf8<'b>(&self, bytes: &[u8], edits: Edits) -> Analyzed<'b> {
        match self.cfg.slice {
            Some(slice) if slice_of(xxh3_128(bytes), self.cfg.seed, slice.count) != slice.index => {
                Analyzed::OtherSlice
            }
            _ => Analyzed::Dropped {
                reason: "invalid_utf8",
                edits,
            },
        }
    }

    /// The token ids of `text` (no special tokens added).
    pub fn encode(&self, text: &str, file: u32, line: u64) -> Result<Vec<u32>, PrepareError> {
        self.tokenizer
            .encode(text)
            .map_err(|e| PrepareError::Encode {
                path: self.files[file as usize].path.clone(),
                line,
                message: e.to_string(),
            })
    }
}
