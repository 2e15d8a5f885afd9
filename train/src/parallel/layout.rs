//! Where every trainable parameter lives in the flat, sharded training state.
//!
//! The parameters are grouped into **units**, as FSDP wraps modules: unit 0 is the root (token
//! and position embeddings, the final norm, an untied `lm_head`), unit `1 + i` is block `i`.
//! Each unit is one flat vector: its parameters in the model's visiting order, end to end,
//! padded with zeros to a multiple of `shards × CHUNK`. Shard `r` of every unit is the
//! contiguous range `[r·len/shards, (r+1)·len/shards)`, so gathering a unit (FSDP's per-block
//! all-gather) takes an equal piece from every rank, and reduce-scattering its gradient leaves
//! each rank the piece it updates.
//!
//! `CHUNK` fixes the order in which the gradient norm is summed (per chunk, then the chunks in
//! order), and shard boundaries fall on chunk boundaries, so the norm, the clipping and the
//! element-wise optimizer update give the same bits at any world size.

use std::collections::HashMap;
use std::ops::Range;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// Elements per gradient-norm chunk (and the granularity of shard boundaries).
pub const CHUNK: usize = 4096;

/// One parameter's place in its unit.
#[derive(Debug, Clone, PartialEq)]
pub struct FlatParam {
    /// Checkpoint (transformers) name.
    pub name: String,
    /// burn's id of the parameter in the module.
    pub id: ParamId,
    /// Shape as the module holds it (transformers' layout).
    pub shape: Vec<usize>,
    /// Offset of the first element within the unit's flat vector.
    pub offset: usize,
}

impl FlatParam {
    /// Its number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The range of the unit's flat vector it occupies.
    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.numel()
    }
}

/// One unit: the root or one block.
#[derive(Debug, Clone, PartialEq)]
pub struct Unit {
    /// The unit's parameters, in flat-vector order.
    pub params: Vec<FlatParam>,
    /// Elements of real parameters.
    pub numel: usize,
    /// Length with padding: a multiple of `shards × CHUNK`.
    pub padded: usize,
}

/// The units of a model, sharded `shards` ways.
#[derive(Debug, Clone, PartialEq)]
pub struct FlatLayout {
    /// The units; unit 0 is the root.
    pub units: Vec<Unit>,
    /// How many ways each unit is split.
    pub shards: usize,
    by_id: HashMap<ParamId, (usize, usize)>,
}

impl FlatLayout {
    /// The layout of `module`'s trainable float parameters (those that require a gradient),
    /// named by `name_of(module path)`, split `shards` ways. `unit_of(name)` says which unit a
    /// parameter belongs to (0 = root).
    pub fn new<B: Backend, M: Module<B>>(
        module: &M,
        shards: usize,
        name_of: impl Fn(&str) -> String,
        unit_of: impl Fn(&str) -> usize,
    ) -> Self {
        struct Visit {
            path: Vec<String>,
            out: Vec<(String, ParamId, Vec<usize>)>,
        }
        impl<B: Backend> ModuleVisitor<B> for Visit {
            fn enter_module(&mut self, name: &str, _container_type: &str) {
                self.path.push(name.to_string());
            }
            fn exit_module(&mut self, _name: &str, _container_type: &str) {
                self.path.pop();
            }
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                let value = param.val();
                if value.is_require_grad() {
                    let shape = value.dims().to_vec();
                    self.out.push((self.path.join("."), param.id, shape));
                }
            }
        }
        let mut v = Visit {
            path: Vec::new(),
            out: Vec::new(),
        };
        module.visit(&mut v);
        let shards = shards.max(1);
        let mut units: Vec<Unit> = Vec::new();
        for (path, id, shape) in v.out {
            let name = name_of(&path);
            let u = unit_of(&name);
            if units.len() <= u {
                units.resize_with(u + 1, || Unit {
                    params: Vec::new(),
                    numel: 0,
                    padded: 0,
                });
            }
            let unit = &mut units[u];
            let offset = unit.numel;
            unit.numel += shape.iter().product::<usize>();
            unit.params.push(FlatParam {
                name,
                id,
                shape,
                offset,
            });
        }
        let granule = shards * CHUNK;
        for unit in &mut units {
            unit.padded = unit.numel.div_ceil(granule).max(1) * granule;
        }
        let by_id = units
            .iter()
            .enumerate()
            .flat_map(|(u, unit)| {
                unit.params
                    .iter()
                    .enumerate()
                    .map(move |(i, p)| (p.id, (u, i)))
            })
            .collect();
        FlatLayout {
            units,
            shards,
            by_id,
        }
    }

    /// The layout of an MPT: units by block, transformers' names.
    pub fn of_mpt<B: Backend>(model: &tessera_model::Mpt<B>, shards: usize) -> Self {
        Self::new(model, shards, tessera_model::spec::hf_name, mpt_unit)
    }

    /// The same parameters split another number of ways.
    pub fn reshard(&self, shards: usize) -> Self {
        let shards = shards.max(1);
        let granule = shards * CHUNK;
        let mut out = self.clone();
        out.shards = shards;
        for unit in &mut out.units {
            unit.padded = unit.numel.div_ceil(granule).max(1) * granule;
        }
        out
    }

    /// The same padding split `shards` ways, a divisor of the current count: each new shard is
    /// several current ones end to end. `HYBRID_SHARD` pads for the whole job but shards within
    /// a node, so every rank can still write an equal part of a checkpoint.
    ///
    /// # Panics
    /// If `shards` does not divide the current count (a caller's bug, not bad input).
    pub fn regroup(mut self, shards: usize) -> Self {
        let shards = shards.max(1);
        assert!(
            self.shards.is_multiple_of(shards),
            "{shards} shards do not divide the layout's {}",
            self.shards
        );
        self.shards = shards;
        self
    }

    /// Shard `rank`'s range of unit `u`'s flat vector.
    pub fn shard(&self, u: usize, rank: usize) -> Range<usize> {
        let len = self.units[u].padded / self.shards;
        rank * len..(rank + 1) * len
    }

    /// Elements of one shard of unit `u`.
    pub fn shard_len(&self, u: usize) -> usize {
        self.units[u].padded / self.shards
    }

    /// Which unit and which parameter of it `id` is.
    pub fn find(&self, id: ParamId) -> Option<(usize, &FlatParam)> {
        self.by_id
            .get(&id)
            .map(|&(u, i)| (u, &self.units[u].params[i]))
    }

    /// Elements of real parameters, over all units.
    pub fn numel(&self) -> usize {
        self.units.iter().map(|u| u.numel).sum()
    }

    /// The parameter named `name`, with its unit.
    pub fn by_name(&self, name: &str) -> Option<(usize, &FlatParam)> {
        self.units
            .iter()
            .enumerate()
            .find_map(|(u, unit)| unit.params.iter().find(|p| p.name == name).map(|p| (u, p)))
    }
}

/// MPT's units: `transformer.blocks.{i}.…` is unit `1 + i`, everything else the root.
pub fn mpt_unit(name: &str) -> usize {
    name.strip_prefix("transformer.blocks.")
        .and_then(|rest| rest.split('.').next())
        .and_then(|i| i.parse::<usize>().ok())
        .map_or(0, |i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use tessera_model::MptConfig;

    fn tiny() -> tessera_model::Mpt<Autodiff<Flex>> {
        let json =
            r#"{"d_model": 32, "n_heads": 2, "n_layers": 3, "vocab_size": 64, "max_seq_len": 16}"#;
        MptConfig::from_json_str(json, "test")
            .unwrap()
            .init::<Autodiff<Flex>>(&Default::default(), 1)
    }

    #[test]
    fn units_follow_the_blocks_and_cover_every_parameter_once() {
        let model = tiny();
        let layout = FlatLayout::of_mpt(&model, 4);
        assert_eq!(layout.units.len(), 1 + 3);
        assert_eq!(layout.numel() as u64, model.config().num_params());
        for (u, unit) in layout.units.iter().enumerate() {
            assert_eq!(unit.padded % (4 * CHUNK), 0);
            assert!(unit.padded >= unit.numel);
            let mut next = 0;
            for p in &unit.params {
                assert_eq!(p.offset, next, "{} is not packed", p.name);
                next += p.numel();
                assert_eq!(mpt_unit(&p.name), u, "{}", p.name);
            }
        }
        assert!(
            layout
                .by_name("transformer.wte.weight")
                .is_some_and(|(u, _)| u == 0)
        );
        assert!(
            layout
                .by_name("transformer.blocks.2.ffn.down_proj.weight")
                .is_some_and(|(u, _)| u == 3)
        );
    }

    #[test]
    fn shards_tile_each_unit_on_chunk_boundaries_at_any_world_size() {
        let layout = FlatLayout::of_mpt(&tiny(), 1);
        for world in [1, 2, 3, 4] {
            let l = layout.reshard(world);
            for u in 0..l.units.len() {
                let mut next = 0;
                for r in 0..world {
                    let s = l.shard(u, r);
                    assert_eq!(s.start, next);
                    assert_eq!(s.start % CHUNK, 0);
                    next = s.end;
                }
                assert_eq!(next, l.units[u].padded);
            }
        }
    }
}
