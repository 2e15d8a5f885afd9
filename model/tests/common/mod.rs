//! Shared helpers for the fixture tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::backend::{Autodiff, Flex};
use burn::module::{ModuleMapper, Param};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

pub type B = Flex;
pub type AD = Autodiff<Flex>;

pub const FIXTURES: [&str; 3] = ["tiny_alibi_h4", "h6_ffn3", "clip_scale"];

pub fn dir(name: &str) -> PathBuf {
    tessera_testkit::repo_fixture(format!("mpt/{name}"))
}

pub fn index(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(dir(name).join("index.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

pub fn npy_f32(name: &str, file: &str) -> (Vec<f32>, Vec<usize>) {
    tessera_testkit::read_npy_f32(dir(name).join(file))
}

pub fn npy_i64(name: &str, file: &str) -> (Vec<i64>, Vec<usize>) {
    tessera_testkit::read_npy_i64(dir(name).join(file))
}

pub fn ids<Bk: Backend>(values: &[i64], shape: [usize; 2]) -> Tensor<Bk, 2, Int> {
    Tensor::from_data(TensorData::new(values.to_vec(), shape), &Default::default())
}

pub fn mask<Bk: Backend>(values: &[i64], shape: [usize; 2]) -> Tensor<Bk, 2, Bool> {
    let v: Vec<bool> = values.iter().map(|&x| x != 0).collect();
    Tensor::from_data(TensorData::new(v, shape), &Default::default())
}

pub fn to_vec<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec::<f32>().unwrap()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Gradient of every float parameter, by checkpoint name (the library's
/// [`tessera_model::hf::named_gradients`], as f32 vectors).
pub fn named_grads(
    model: &tessera_model::Mpt<AD>,
    grads: &<AD as AutodiffBackend>::Gradients,
) -> BTreeMap<String, Vec<f32>> {
    tessera_model::hf::named_gradients(model, grads)
        .into_iter()
        .map(|(name, g)| (name, g.convert::<f32>().to_vec::<f32>().unwrap()))
        .collect()
}

/// `param -= lr * grad` for every parameter (one plain SGD step).
pub struct Sgd<'a> {
    pub grads: &'a <AD as AutodiffBackend>::Gradients,
    pub lr: f64,
}

impl ModuleMapper<AD> for Sgd<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<AD, D>>) -> Param<Tensor<AD, D>> {
        let (id, tensor, mapper) = param.consume();
        let grad = tensor.grad(self.grads).expect("gradient");
        let updated = Tensor::<AD, D>::from_inner(tensor.inner() - grad * self.lr).require_grad();
        Param::from_mapped_value(id, updated, mapper)
    }
}

/// Tensors of a safetensors file as f32 vectors.
pub fn read_safetensors(path: PathBuf) -> BTreeMap<String, (Vec<f32>, Vec<usize>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), safetensors::Dtype::F32);
            let v = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (name, (v, view.shape().to_vec()))
        })
        .collect()
}
