//! lm-evaluation-harness's `loglikelihood(context, continuation) -> (logprob, is_greedy)`.
//!
//! Encoding follows lm-eval's `_encode_pair`: trailing whitespace of the context moves to the
//! front of the continuation, `whole = tok(context + continuation)`, `ctx = tok(context)`, and
//! the continuation tokens are `whole[len(ctx):]` (so BPE merges across the boundary exactly
//! as in running text). An empty context is replaced by the EOS token. When the pair is longer
//! than `max_len + 1` tokens the context is cut from the left (the last token is never fed to
//! the model, so `max_len` positions suffice).

use burn::prelude::*;
use tessera_data::tokenizer::Tokenizer;
use tessera_model::Mpt;

use super::IclError;
use super::prompt::ScoredSequence;
use super::pytext::py_isspace;
use super::score::{ScoreOptions, score_sequences};

/// One request: the log-probability of `continuation` after `context`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoglikelihoodRequest {
    /// The conditioning text; may be empty.
    pub context: String,
    /// The text whose log-probability is asked for.
    pub continuation: String,
}

/// The answer to one request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Loglikelihood {
    /// Sum of the continuation tokens' log-probabilities.
    pub logprob: f64,
    /// Whether greedy decoding would produce the continuation exactly.
    pub is_greedy: bool,
}

/// Encodes one request (see the module docs); `max_len` is the model's context length.
pub fn encode_request(
    tok: &Tokenizer,
    req: &LoglikelihoodRequest,
    max_len: usize,
) -> Result<ScoredSequence, IclError> {
    let enc = |s: &str| {
        tok.encode(s).map_err(|e| IclError::Tokenizer {
            what: format!("{s:?}"),
            message: e.to_string(),
        })
    };
    let trimmed = req.context.trim_end_matches(py_isspace);
    let (context, continuation) = (
        trimmed.to_string(),
        format!("{}{}", &req.context[trimmed.len()..], req.continuation),
    );
    let (ctx, cont) = if context.is_empty() {
        let eos = tok.eos_id().ok_or_else(|| IclError::Prompt {
            what: "loglikelihood".into(),
            message: "empty context and the tokenizer has no EOS token to stand in for it".into(),
        })?;
        (vec![eos], enc(&continuation)?)
    } else {
        let whole = enc(&format!("{context}{continuation}"))?;
        let ctx = enc(&context)?;
        let n = ctx.len().min(whole.len());
        (whole[..n].to_vec(), whole[n..].to_vec())
    };
    if cont.is_empty() {
        return Err(IclError::Prompt {
            what: format!("continuation {:?}", req.continuation),
            message: "encodes to no tokens".into(),
        });
    }
    if cont.len() > max_len {
        return Err(IclError::Prompt {
            what: format!("continuation {:?}", req.continuation),
            message: format!("{} tokens do not fit a context of {max_len}", cont.len()),
        });
    }
    let room = max_len + 1 - cont.len();
    let truncated = ctx.len().saturating_sub(room);
    let mut tokens = ctx[truncated..].to_vec();
    let context_len = tokens.len();
    tokens.extend(cont);
    Ok(ScoredSequence {
        tokens,
        context_len,
        truncated,
    })
}

/// Scores every request, batched (`batch_size` sequences per forward pass); the model's
/// `max_seq_len` bounds each sequence.
pub fn loglikelihood<B: Backend>(
    model: &Mpt<B>,
    tok: &Tokenizer,
    requests: &[LoglikelihoodRequest],
    batch_size: usize,
    device: &B::Device,
) -> Result<Vec<Loglikelihood>, IclError> {
    let max_len = model.config().max_seq_len;
    let seqs = requests
        .iter()
        .map(|r| encode_request(tok, r, max_len))
        .collect::<Result<Vec<_>, _>>()?;
    let refs: Vec<&ScoredSequence> = seqs.iter().collect();
    let opts = ScoreOptions {
        batch_size,
        pad_id: tok.eos_id().unwrap_or(0),
        ..Default::default()
    };
    let scores = score_sequences(model, &refs, &opts, device)?;
    Ok(seqs
        .iter()
        .zip(scores)
        .map(|(s, sc)| Loglikelihood {
            logprob: sc.sum_logprob(),
            is_greedy: sc.is_greedy(s.continuation()),
        })
        .collect())
}
