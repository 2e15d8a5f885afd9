//! Moving between a module's parameters and the flat units of a [`FlatLayout`]: a unit's
//! gradients as one padded vector, and a module whose parameters are taken from unit vectors.

use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};

use super::layout::FlatLayout;

/// Unit `u`'s gradients as one flat vector of the unit's padded length (a parameter without a
/// gradient, and the padding, are zeros). They are taken out of `grads`, so memory is released
/// unit by unit.
pub fn unit_grad<B: AutodiffBackend>(
    layout: &FlatLayout,
    u: usize,
    grads: &mut GradientsParams,
    device: &B::Device,
) -> Tensor<B::InnerBackend, 1> {
    let unit = &layout.units[u];
    let mut parts: Vec<Tensor<B::InnerBackend, 1>> = Vec::with_capacity(unit.params.len() + 1);
    for p in &unit.params {
        let n = p.numel();
        let g = match p.shape.len() {
            1 => grads.remove::<B::InnerBackend, 1>(p.id),
            2 => grads
                .remove::<B::InnerBackend, 2>(p.id)
                .map(|t| t.reshape([n])),
            3 => grads
                .remove::<B::InnerBackend, 3>(p.id)
                .map(|t| t.reshape([n])),
            4 => grads
                .remove::<B::InnerBackend, 4>(p.id)
                .map(|t| t.reshape([n])),
            _ => None,
        };
        parts.push(g.unwrap_or_else(|| Tensor::zeros([n], device)));
    }
    let pad = unit.padded - unit.numel;
    if pad > 0 {
        parts.push(Tensor::zeros([pad], device));
    }
    Tensor::cat(parts, 0)
}

/// `module` with the parameters of the given units taken from their flat vectors (each of the
/// unit's padded length); other parameters are left as they are. Loaded parameters require a
/// gradient, as trained parameters do.
pub fn load_units<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: M,
    layout: &FlatLayout,
    units: &[(usize, Tensor<B::InnerBackend, 1>)],
) -> M {
    struct Load<'a, B: AutodiffBackend> {
        layout: &'a FlatLayout,
        units: &'a [(usize, Tensor<B::InnerBackend, 1>)],
    }
    impl<B: AutodiffBackend> ModuleMapper<B> for Load<'_, B> {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let (id, value, mapper) = param.consume();
            let found = self.layout.find(id).and_then(|(u, p)| {
                self.units
                    .iter()
                    .find(|(k, _)| *k == u)
                    .map(|(_, flat)| (flat, p))
            });
            let value = match found {
                Some((flat, p)) => {
                    let dims: [usize; D] = p
                        .shape
                        .clone()
                        .try_into()
                        .expect("the layout was built from this module's shapes");
                    let inner = flat.clone().slice([p.range()]).reshape(dims);
                    Tensor::from_inner(inner).require_grad()
                }
                None => value,
            };
            Param::from_mapped_value(id, value, mapper)
        }
    }
    module.map(&mut Load::<B> { layout, units })
}

/// Every float parameter's dotted path (module field names, `Vec` indices) and its id, in
/// visiting order.
pub fn param_names<B: Backend, M: Module<B>>(module: &M) -> Vec<(String, ParamId)> {
    struct Names {
        path: Vec<String>,
        out: Vec<(String, ParamId)>,
    }
    impl<B: Backend> ModuleVisitor<B> for Names {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.out.push((self.path.join("."), param.id));
        }
    }
    let mut v = Names {
        path: Vec::new(),
        out: Vec::new(),
    };
    module.visit(&mut v);
    v.out
}

/// Unit `u`'s parameter values as one flat vector of the unit's padded length.
pub fn unit_values<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    layout: &FlatLayout,
    u: usize,
    device: &B::Device,
) -> Tensor<B::InnerBackend, 1> {
    struct Collect<'a, B: AutodiffBackend> {
        layout: &'a FlatLayout,
        u: usize,
        found: Vec<(usize, Tensor<B::InnerBackend, 1>)>,
    }
    impl<B: AutodiffBackend> burn::module::ModuleVisitor<B> for Collect<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some((u, p)) = self.layout.find(param.id)
                && u == self.u
            {
                let n = p.numel();
                self.found
                    .push((p.offset, param.val().inner().reshape([n])));
            }
        }
    }
    let mut c = Collect::<B> {
        layout,
        u,
        found: Vec::new(),
    };
    module.visit(&mut c);
    c.found.sort_by_key(|(offset, _)| *offset);
    let unit = &layout.units[u];
    let mut parts: Vec<_> = c.found.into_iter().map(|(_, t)| t).collect();
    let pad = unit.padded - unit.numel;
    if pad > 0 {
        parts.push(Tensor::zeros([pad], device));
    }
    Tensor::cat(parts, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::module::Module;
    use tessera_model::{Mpt, MptConfig, MptInput};

    type B = Autodiff<Flex>;

    fn tiny(seed: u64) -> Mpt<B> {
        let json =
            r#"{"d_model": 32, "n_heads": 2, "n_layers": 2, "vocab_size": 64, "max_seq_len": 16}"#;
        MptConfig::from_json_str(json, "test")
            .unwrap()
            .init::<B>(&Default::default(), seed)
    }

    #[test]
    fn values_round_trip_through_the_flat_units() {
        let a = tiny(1);
        let b = tiny(2);
        let device = Default::default();
        // a's values as flat units (a's layout and b's list the same parameters in order).
        let from = FlatLayout::of_mpt(&a, 2);
        let units: Vec<_> = (0..from.units.len())
            .map(|u| (u, unit_values::<B, _>(&a, &from, u, &device)))
            .collect();
        // b takes a's values; ids, and so gradients' keys, stay b's own.
        let ids_before = param_names(&b);
        let into = FlatLayout::of_mpt(&b, 2);
        let b = load_units(b, &into, &units);
        assert_eq!(param_names(&b), ids_before);
        let (pa, pb) = (
            tessera_model::hf::named_parameters(&a.valid()),
            tessera_model::hf::named_parameters(&b.valid()),
        );
        assert_eq!(pa, pb);
        // Loaded parameters train.
        assert!(b.wte.weight.val().is_require_grad());
        let _ = Module::<B>::num_params(&b);
    }

    #[test]
    fn a_units_gradient_is_its_parameters_gradients_end_to_end() {
        let model = tiny(3);
        let layout = FlatLayout::of_mpt(&model, 1);
        let device = Default::default();
        let ids = Tensor::<B, 2, burn::tensor::Int>::from_data(
            burn::tensor::TensorData::new((0..24i64).map(|i| i % 64).collect::<Vec<_>>(), [2, 12]),
            &device,
        );
        let loss = model.loss_sum(MptInput::new(ids.clone()), ids);
        let mut grads = GradientsParams::from_grads(loss.backward(), &model);
        let p = &layout.units[1].params[2];
        let want = grads
            .get::<Flex, 2>(p.id)
            .map(|t| t.into_data().to_vec::<f32>().unwrap())
            .or_else(|| {
                grads
                    .get::<Flex, 1>(p.id)
                    .map(|t| t.into_data().to_vec::<f32>().unwrap())
            })
            .unwrap();
        let flat = unit_grad::<B>(&layout, 1, &mut grads, &device);
        assert_eq!(flat.dims(), [layout.units[1].padded]);
        // Taken out: the gradient's memory goes with the flat copy.
        assert!(grads.get::<Flex, 2>(p.id).is_none() && grads.get::<Flex, 1>(p.id).is_none());
        let got = flat.slice([p.range()]).into_data().to_vec::<f32>().unwrap();
        assert_eq!(got, want);
    }
}
