//! The fused kernels on burn's Flex backend, with and without autodiff.
//!
//! A model generic over `B: Backend` cannot name Flex's tensor type, so each entry point checks
//! at run time whether `B` is `Flex` or `Autodiff<Flex>` (a `TypeId` comparison) and moves the
//! primitive across through `Any`, which is safe and free. Anything else (another backend, a
//! dtype other than f32) is handed back unchanged and the caller takes the generic path.
//!
//! On `Autodiff<Flex>` each kernel is one graph node with a hand-written backward
//! ([`rows`](super::rows)), registered through burn-autodiff's public `Backward` API.

use std::any::{Any, TypeId};

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::{FlexTensor, Layout};
use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Bytes, DType, Shape, TensorMetadata};

use super::rows;

type AdFlex = Autodiff<Flex>;
type AdTensor = FloatTensor<AdFlex>;

/// Which of the specialised backends `B` is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Which {
    Flex,
    AutodiffFlex,
    Other,
}

pub(crate) fn which<B: Backend>() -> Which {
    let id = TypeId::of::<B>();
    if id == TypeId::of::<Flex>() {
        Which::Flex
    } else if id == TypeId::of::<AdFlex>() {
        Which::AutodiffFlex
    } else {
        Which::Other
    }
}

/// Moves `value` to type `T` if it is one, else hands it back.
pub(crate) fn cast<S: 'static, T: 'static>(value: S) -> Result<T, S> {
    let mut slot = Some(value);
    match (&mut slot as &mut dyn Any).downcast_mut::<Option<T>>() {
        Some(t) => Ok(t.take().expect("the slot was just filled")),
        None => Err(slot.expect("the slot is untouched when the types differ")),
    }
}

/// The f32 contents of `t`, contiguous; `None` for another dtype.
fn f32_data(t: &FlexTensor) -> Option<FlexTensor> {
    if t.dtype() != DType::F32 {
        return None;
    }
    Some(if t.as_slice::<f32>().is_some() { t.clone() } else { t.to_contiguous() })
}

fn slice(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("f32_data returns contiguous f32 tensors")
}

fn tensor(values: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::new(Bytes::from_elems(values), Layout::contiguous(shape), DType::F32)
}

// ---------------------------------------------------------------------------------------------
// GELU

fn gelu_flex(x: &FlexTensor) -> FlexTensor {
    tensor(rows::gelu(slice(x)), x.shape())
}

#[derive(Debug)]
struct GeluBackward;

impl Backward<Flex, 1> for GeluBackward {
    /// The input.
    type State = FlexTensor;

    fn backward(self, ops: Ops<FlexTensor, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Flex>(&ops.node);
        let [parent] = ops.parents;
        if let Some(node) = parent {
            let g = f32_data(&grad).expect("gradients of an f32 node are f32");
            let dx = rows::gelu_backward(slice(&ops.state), slice(&g));
            grads.register::<Flex>(node.id, tensor(dx, ops.state.shape()));
        }
    }
}

/// GELU on Flex / Autodiff<Flex> f32 tensors; `Err(x)` otherwise.
pub(crate) fn gelu<P: 'static>(x: P, which: Which) -> Result<P, P> {
    match which {
        Which::Flex => {
            let t: FlexTensor = cast(x)?;
            match f32_data(&t) {
                Some(c) => Ok(cast(gelu_flex(&c)).unwrap_or_else(|_| unreachable!())),
                None => Err(cast(t).unwrap_or_else(|_| unreachable!())),
            }
        }
        Which::AutodiffFlex => {
            let t: AdTensor = cast(x)?;
            let Some(input) = f32_data(&t.primitive) else {
                return Err(cast(t).unwrap_or_else(|_| unreachable!()));
            };
            let out = match GeluBackward
                .prepare::<NoCheckpointing>([t.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    let y = gelu_flex(&input);
                    prep.finish(input, y)
                }
                OpsKind::UnTracked(prep) => prep.finish(gelu_flex(&input)),
            };
            Ok(cast(out).unwrap_or_else(|_| unreachable!()))
        }
        Which::Other => Err(x),
    }
}

// ---------------------------------------------------------------------------------------------
// softmax(x + bias) over the last axis

fn softmax_flex(x: &FlexTensor, bias: Option<&FlexTensor>) -> FlexTensor {
    let shape = x.shape();
    let n = shape.dims[shape.num_dims() - 1];
    tensor(rows::softmax(slice(x), bias.map(slice), n), shape)
}

#[derive(Debug)]
struct SoftmaxBackward;

impl Backward<Flex, 2> for SoftmaxBackward {
    /// The output (the probabilities) and the bias shape.
    type State = (FlexTensor, Shape);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Flex>(&ops.node);
        let (y, bias_shape) = ops.state;
        let [x_node, bias_node] = ops.parents;
        let shape = y.shape();
        let n = shape.dims[shape.num_dims() - 1];
        let g = f32_data(&grad).expect("gradients of an f32 node are f32");
        let dx = tensor(rows::softmax_backward(slice(&y), slice(&g), n), shape);
        if let Some(node) = bias_node {
            // The bias was broadcast over the leading axis: sum its gradient back.
            let rows = bias_shape.num_elements();
            let db = slice(&dx).chunks(rows).fold(vec![0.0f32; rows], |mut acc, c| {
                acc.iter_mut().zip(c).for_each(|(a, v)| *a += v);
                acc
            });
            grads.register::<Flex>(node.id, tensor(db, bias_shape));
        }
        if let Some(node) = x_node {
            grads.register::<Flex>(node.id, dx);
        }
    }
}

/// Whether `bias` can be read row-cyclically against `x`: same trailing axes, and a leading
/// axis of 1 or `x`'s.
fn bias_fits(x: &Shape, bias: &Shape) -> bool {
    let (xd, bd) = (&x.dims, &bias.dims);
    xd.len() == bd.len() && xd[1..] == bd[1..] && (bd[0] == 1 || bd[0] == xd[0])
}

/// `softmax(x + bias)` over the last axis on Flex / Autodiff<Flex> f32 tensors; `Err` (with the
/// inputs back) otherwise.
pub(crate) fn softmax<P: 'static>(x: P, bias: Option<P>, which: Which) -> Result<P, (P, Option<P>)> {
    match which {
        Which::Flex => {
            let t: FlexTensor = cast(x).map_err(|x| (x, bias.take_back()))?;
            let b: Option<FlexTensor> = bias.map(|b| cast(b).unwrap_or_else(|_| unreachable!()));
            let fits = b.as_ref().is_none_or(|b| bias_fits(&t.shape(), &b.shape()));
            match (f32_data(&t), b.as_ref().map(f32_data)) {
                (Some(c), None) | (Some(c), Some(Some(_))) if fits => {
                    let bc = b.as_ref().and_then(f32_data);
                    Ok(give(softmax_flex(&c, bc.as_ref())))
                }
                _ => Err((give(t), b.map(give))),
            }
        }
        Which::AutodiffFlex => {
            let t: AdTensor = cast(x).map_err(|x| (x, bias.take_back()))?;
            let b: Option<AdTensor> = bias.map(|b| cast(b).unwrap_or_else(|_| unreachable!()));
            let fits = b.as_ref().is_none_or(|b| bias_fits(&t.primitive.shape(), &b.primitive.shape()));
            let input = f32_data(&t.primitive);
            let bias_data = b.as_ref().map(|b| f32_data(&b.primitive));
            let (Some(input), true, Some(None) | None) | (Some(input), true, Some(Some(_))) =
                (input, fits, bias_data.clone().map(|d| d.map(|_| ())))
            else {
                return Err((give(t), b.map(give)));
            };
            let bias_data = bias_data.flatten();
            let y = softmax_flex(&input, bias_data.as_ref());
            let bias_shape = bias_data.as_ref().map_or_else(|| Shape::new([1]), |b| b.shape());
            // Without a bias, the bias slot is the input's node again, so the parent array is
            // full; its gradient is then skipped (the shape check below).
            let bias_node = b.as_ref().map_or_else(|| t.node.clone(), |b| b.node.clone());
            let out = match SoftmaxBackward
                .prepare::<NoCheckpointing>([t.node.clone(), bias_node])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish((y.clone(), bias_shape), y),
                OpsKind::UnTracked(prep) => prep.finish(y),
            };
            Ok(give(out))
        }
        Which::Other => Err((x, bias)),
    }
}

/// Helper: an `Option<P>` that is handed back unchanged on a failed cast.
trait TakeBack {
    fn take_back(self) -> Self;
}

impl<P> TakeBack for Option<P> {
    fn take_back(self) -> Self {
        self
    }
}

/// Moves a concrete tensor back to the caller's primitive type (the caller checked the type).
fn give<T: 'static, P: 'static>(t: T) -> P {
    cast(t).unwrap_or_else(|_| unreachable!("the primitive type was checked by `which`"))
}
