//! Linear and embedding layers that keep PyTorch's weight layout.
//!
//! burn's `nn::Linear` stores `[d_in, d_out]`; checkpoints store `[d_out, d_in]`. Keeping the
//! checkpoint layout makes import and export plain copies (bit-exact round trips) and costs
//! nothing at run time: the transpose is a stride swap the matmul reads directly.

use burn::module::{Module, Param};
use burn::prelude::*;
use burn::tensor::FloatDType;

use crate::kernels;
use crate::lora::LoraLayer;

/// `y = x W^T + b` with `W: [d_out, d_in]` as in `torch.nn.Linear`, plus a LoRA update when an
/// adapter is attached (see [`crate::lora`]).
#[derive(Module, Debug)]
pub struct Linear<B: Backend> {
    /// `[d_out, d_in]`.
    pub weight: Param<Tensor<B, 2>>,
    /// `[d_out]`, absent when the config has no bias.
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// The attached LoRA adapter: `y += scale · B A dropout(x)`.
    pub lora: Option<LoraLayer<B>>,
}

impl<B: Backend> Linear<B> {
    /// Applies the layer to the last axis.
    ///
    /// # Shapes
    /// - `x`: `[..., d_in]` -> `[..., d_out]`
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        self.forward_in(x, None)
    }

    /// [`Linear::forward`] with the product (and the bias add) in `compute` (mixed precision:
    /// see [`matmul_in`]); the output is f32 again.
    ///
    /// # Shapes
    /// - `x`: `[..., d_in]` -> `[..., d_out]`
    pub fn forward_in<const D: usize>(
        &self,
        x: Tensor<B, D>,
        compute: Option<FloatDType>,
    ) -> Tensor<B, D> {
        let dims = x.dims();
        let d_in = dims[D - 1];
        let [d_out, _] = self.weight.dims();
        let rows: usize = dims[..D - 1].iter().product();
        // One 2-D GEMM over all rows (forward and both backward products), rather than a
        // batched matmul whose weight gradient must then be summed over the batch.
        let x = x.reshape([rows, d_in]);
        let y = product(x.clone(), self.weight.val(), compute);
        let y = match &self.bias {
            Some(b) => y + b.val().unsqueeze_dim(0),
            None => y,
        };
        let y = match &self.lora {
            Some(l) => y + l.delta(x, compute),
            None => y,
        };
        let mut out = dims;
        out[D - 1] = d_out;
        y.reshape(out)
    }
}

impl<B: Backend> Linear<B> {
    /// Output features `start..start + len` only: the layer restricted to those rows of its
    /// weight (and bias, and adapter), e.g. the query, key or value block of a fused `Wqkv`.
    ///
    /// `lora_hidden` is the adapter's first product for `x` ([`LoraLayer::down`] of `x` as
    /// `[rows, d_in]`), computed once and shared by the blocks of one layer so that they see
    /// one dropout mask, as PEFT's single `lora_A(dropout(x))`; `None` computes it here.
    ///
    /// # Shapes
    /// - `x`: `[..., d_in]` -> `[..., len]`
    /// - `lora_hidden`: `[rows, r]`, `rows` the product of `x`'s leading axes
    pub fn forward_rows_in<const D: usize>(
        &self,
        x: Tensor<B, D>,
        start: usize,
        len: usize,
        compute: Option<FloatDType>,
        lora_hidden: Option<Tensor<B, 2>>,
    ) -> Tensor<B, D> {
        let dims = x.dims();
        let d_in = dims[D - 1];
        let rows: usize = dims[..D - 1].iter().product();
        let x = x.reshape([rows, d_in]);
        let w = self.weight.val().narrow(0, start, len); // [len, d_in]
        let y = product(x.clone(), w, compute);
        let y = match &self.bias {
            Some(b) => y + b.val().narrow(0, start, len).unsqueeze_dim(0),
            None => y,
        };
        let y = match &self.lora {
            Some(l) => {
                let h = lora_hidden.unwrap_or_else(|| l.down(x, compute));
                y + l.up(h, Some((start, len)), compute)
            }
            None => y,
        };
        let mut out = dims;
        out[D - 1] = len;
        y.reshape(out)
    }
}

/// `x · wᵀ` (`x`: `[rows, d_in]`, `w`: `[d_out, d_in]`) through [`kernels::linear`], in
/// `compute` when given (as [`matmul_in`]: both cast to `compute`, the result cast back to
/// `x`'s dtype), so that a fused product (cuBLASLt on CUDA) sees the compute dtype.
///
/// A weight stored in a lower precision than `x` (a frozen bf16 base under LoRA, see
/// [`crate::lora`]) makes the product run in the weight's dtype, as PyTorch multiplies a bf16
/// module: `x` is cast down, the weight is never copied up.
pub(crate) fn product<B: Backend>(
    x: Tensor<B, 2>,
    w: Tensor<B, 2>,
    compute: Option<FloatDType>,
) -> Tensor<B, 2> {
    let compute = compute.or_else(|| stored_below(&w, &x));
    match compute {
        Some(dt) if FloatDType::from(x.dtype()) != dt => {
            let out = FloatDType::from(x.dtype());
            kernels::linear(x.cast(dt), w.cast(dt)).cast(out)
        }
        _ => kernels::linear(x, w),
    }
}

/// The dtype of `w` when it differs from `x`'s (a low-precision frozen weight), else `None`.
pub(crate) fn stored_below<B: Backend, const D: usize, const E: usize>(
    w: &Tensor<B, D>,
    x: &Tensor<B, E>,
) -> Option<FloatDType> {
    let (w, x) = (FloatDType::from(w.dtype()), FloatDType::from(x.dtype()));
    (w != x).then_some(w)
}

/// `a · b` computed in `compute` when given (mixed precision, as PyTorch autocast runs matmuls
/// in bf16/f16), with the result cast back to `a`'s dtype; plain `a · b` otherwise.
///
/// Parameters stay f32 (the master weights): the casts are differentiable, so gradients reach
/// them in f32, while the products (forward and backward) run in `compute`.
///
/// # Shapes
/// - `a`: `[..., m, k]`, `b`: `[..., k, n]` -> `[..., m, n]`
pub fn matmul_in<B: Backend, const D: usize>(
    a: Tensor<B, D>,
    b: Tensor<B, D>,
    compute: Option<FloatDType>,
) -> Tensor<B, D> {
    match compute {
        Some(dt) if FloatDType::from(a.dtype()) != dt => {
            let out = FloatDType::from(a.dtype());
            kernels::matmul(a.cast(dt), b.cast(dt)).cast(out)
        }
        _ => kernels::matmul(a, b),
    }
}

/// A lookup table `[num_embeddings, d]` (`torch.nn.Embedding`); also the tied unembedding.
#[derive(Module, Debug)]
pub struct Embedding<B: Backend> {
    /// `[num_embeddings, d]`.
    pub weight: Param<Tensor<B, 2>>,
}

impl<B: Backend> Embedding<B> {
    /// Looks up rows.
    ///
    /// # Shapes
    /// - `ids`: `[batch, seq]` -> `[batch, seq, d]`
    pub fn forward(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let rows = burn::tensor::module::embedding(self.weight.val(), ids);
        // A table stored in bf16 (a frozen base under LoRA) still feeds an f32 residual stream.
        match FloatDType::from(rows.dtype()) {
            FloatDType::F32 => rows,
            _ => rows.cast(FloatDType::F32),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn linear_matches_torch_layout_product() {
        let dev = Default::default();
        // W = [[1, 2], [3, 4], [5, 6]] (d_out 3, d_in 2), b = [0.5, 0, -1]
        let lin = Linear::<Flex> {
            weight: Param::from_tensor(Tensor::from_floats(
                [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]],
                &dev,
            )),
            bias: Some(Param::from_tensor(Tensor::from_floats(
                [0.5, 0.0, -1.0],
                &dev,
            ))),
            lora: None,
        };
        let x = Tensor::<Flex, 3>::from_floats([[[1.0, 1.0], [2.0, -1.0]]], &dev);
        let y = lin.forward(x).into_data().to_vec::<f32>().unwrap();
        assert_eq!(y, vec![3.5, 7.0, 10.0, 0.5, 2.0, 3.0]);
    }
}
