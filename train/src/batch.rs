//! Host batches to device tensors: inputs, shifted targets, masks and `sequence_id`.
//!
//! Targets follow llm-foundry's MPT (`targets = roll(labels, -1)`, last position ignored), so a
//! packed sample of `S` tokens yields `S − 1` loss tokens. `sequence_id` follows llm-foundry's
//! `ConcatenatedSequenceCollatorWrapper`: with an EOS separator, the EOS belongs to the document
//! it ends (the cumulative count is shifted right by one); with a BOS separator, it starts the
//! next one.

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};

/// The target value the loss ignores (PyTorch's `ignore_index`).
pub const IGNORE: i64 = -100;

/// One training sequence on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// Input tokens, `seq_len` long (padded if `attention` says so).
    pub input_ids: Vec<u32>,
    /// The token each position must predict, or [`IGNORE`].
    pub targets: Vec<i64>,
    /// Which positions are real tokens (`None`: all of them).
    pub attention: Option<Vec<bool>>,
    /// Packed-document ids (`None`: one document, or the model does not use them).
    pub sequence_id: Option<Vec<i64>>,
}

/// How `sequence_id` is derived from a packed sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Separator {
    /// This token id ends each document (it belongs to the document it closes).
    Eos(u32),
    /// This token id starts each document (it belongs to the document it opens).
    Bos(u32),
}

impl Example {
    /// A pre-tokenized, packed text sample: every next token is a target, the last has none.
    pub fn packed(tokens: Vec<u32>, separator: Option<Separator>) -> Self {
        let mut targets: Vec<i64> = tokens.iter().skip(1).map(|&t| i64::from(t)).collect();
        targets.push(IGNORE);
        let sequence_id = separator.map(|s| sequence_ids(&tokens, s));
        Self {
            input_ids: tokens,
            targets,
            attention: None,
            sequence_id,
        }
    }

    /// Positions that produce a loss term.
    pub fn loss_tokens(&self) -> usize {
        self.targets.iter().filter(|&&t| t != IGNORE).count()
    }

    /// Real input tokens (padding excluded).
    pub fn tokens(&self) -> usize {
        self.attention
            .as_ref()
            .map_or(self.input_ids.len(), |a| a.iter().filter(|&&x| x).count())
    }
}

/// llm-foundry's `get_sequence_id_from_batch` for one row.
pub fn sequence_ids(tokens: &[u32], separator: Separator) -> Vec<i64> {
    let (sep, eos) = match separator {
        Separator::Eos(id) => (id, true),
        Separator::Bos(id) => (id, false),
    };
    let mut out = Vec::with_capacity(tokens.len());
    let mut count = 0i64;
    for &t in tokens {
        let is_sep = i64::from(t == sep);
        if eos {
            // The count *before* this token: an EOS closes its own document.
            out.push(count);
            count += is_sep;
        } else {
            count += is_sep;
            out.push(count);
        }
    }
    out
}

/// A microbatch on the device.
#[derive(Debug, Clone)]
pub struct DeviceBatch<B: Backend> {
    /// `[batch, seq]`
    pub input_ids: Tensor<B, 2, Int>,
    /// `[batch, seq]`, [`IGNORE`] where no loss is taken.
    pub targets: Tensor<B, 2, Int>,
    /// `[batch, seq]`, true = real token.
    pub attention_mask: Option<Tensor<B, 2, Bool>>,
    /// `[batch, seq]`
    pub sequence_id: Option<Tensor<B, 2, Int>>,
    /// Loss-generating tokens in this microbatch.
    pub loss_tokens: usize,
    /// Input tokens (padding excluded).
    pub tokens: usize,
}

/// Stacks examples of equal length into device tensors.
///
/// # Panics
/// If the examples differ in length or are empty (the loaders guarantee both).
pub fn to_device<B: Backend>(examples: &[Example], device: &B::Device) -> DeviceBatch<B> {
    assert!(
        !examples.is_empty(),
        "a microbatch needs at least one example"
    );
    let seq = examples[0].input_ids.len();
    assert!(
        examples
            .iter()
            .all(|e| e.input_ids.len() == seq && e.targets.len() == seq),
        "ragged microbatch"
    );
    let rows = examples.len();
    let ids: Vec<i64> = examples
        .iter()
        .flat_map(|e| e.input_ids.iter().map(|&t| i64::from(t)))
        .collect();
    let targets: Vec<i64> = examples
        .iter()
        .flat_map(|e| e.targets.iter().copied())
        .collect();
    let int = |v: Vec<i64>| Tensor::<B, 2, Int>::from_data(TensorData::new(v, [rows, seq]), device);
    let attention_mask = examples.iter().any(|e| e.attention.is_some()).then(|| {
        let mask: Vec<bool> = examples
            .iter()
            .flat_map(|e| e.attention.clone().unwrap_or_else(|| vec![true; seq]))
            .collect();
        Tensor::<B, 2, Bool>::from_data(TensorData::new(mask, [rows, seq]), device)
    });
    let sequence_id = examples.iter().any(|e| e.sequence_id.is_some()).then(|| {
        int(examples
            .iter()
            .flat_map(|e| e.sequence_id.clone().unwrap_or_else(|| vec![0; seq]))
            .collect())
    });
    let tokens = examples.iter().map(Example::tokens).sum();
    DeviceBatch {
        input_ids: int(ids),
        targets: int(targets),
        attention_mask,
        sequence_id,
        loss_tokens: examples.iter().map(Example::loss_tokens).sum(),
        tokens,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_targets_are_shifted_with_the_last_ignored() {
        let e = Example::packed(vec![5, 6, 7, 8], None);
        assert_eq!(e.targets, vec![6, 7, 8, IGNORE]);
        assert_eq!(e.loss_tokens(), 3);
    }

    #[test]
    fn eos_closes_its_document_like_llm_foundry() {
        // llm-foundry: cumsum(is_eos) shifted right by one.
        assert_eq!(
            sequence_ids(&[1, 2, 0, 3, 0, 0, 4], Separator::Eos(0)),
            vec![0, 0, 0, 1, 1, 2, 3]
        );
    }

    #[test]
    fn bos_opens_its_document() {
        assert_eq!(
            sequence_ids(&[9, 1, 2, 9, 3], Separator::Bos(9)),
            vec![1, 1, 1, 2, 2]
        );
        assert_eq!(sequence_ids(&[1, 9, 2], Separator::Bos(9)), vec![0, 1, 1]);
    }

    #[test]
    fn device_batch_counts_tokens_and_keeps_masks() {
        type B = burn::backend::Flex;
        let a = Example::packed(vec![1, 2, 3], Some(Separator::Eos(2)));
        let mut b = Example::packed(vec![4, 5, 0], None);
        b.attention = Some(vec![true, true, false]);
        b.targets = vec![5, IGNORE, IGNORE];
        let d = to_device::<B>(&[a, b], &Default::default());
        assert_eq!(d.loss_tokens, 3);
        assert_eq!(d.tokens, 5);
        let mask = d
            .attention_mask
            .unwrap()
            .into_data()
            .to_vec::<bool>()
            .unwrap();
        assert_eq!(mask, vec![true, true, true, true, true, false]);
        let sid = d
            .sequence_id
            .unwrap()
            .into_data()
            .convert::<i64>()
            .to_vec::<i64>()
            .unwrap();
        // Row 0: the EOS (2) closes document 0, so the token after it is in document 1.
        assert_eq!(sid, vec![0, 0, 1, 0, 0, 0]);
        let t = d
            .targets
            .into_data()
            .convert::<i64>()
            .to_vec::<i64>()
            .unwrap();
        assert_eq!(t, vec![2, 3, IGNORE, 5, IGNORE, IGNORE]);
    }
}
