//! llm-foundry keys that tessera reads but deliberately does not act on.
//!
//! They are legal in llm-foundry YAMLs (composer callbacks, FSDP knobs, dataloader worker counts,
//! streaming download tuning…), so refusing them would stop real configs from loading; acting on
//! them silently would be a lie. They are removed from the tree before the typed config is read,
//! and listed once, in one warning. Anything not here and not in the schema is an error.

use serde_json::Value;

/// Top-level keys tessera ignores, with the reason shown in docs.
pub const IGNORED_TOP_LEVEL: &[&str] = &[
    "tp_config",            // no tensor parallelism
    "callbacks", // composer callbacks (speed_monitor, lr_monitor…): tessera has built-in metrics
    "loggers",   // wandb/mlflow: tessera writes metrics.jsonl and TensorBoard
    "dist_timeout", //
    "code_paths", // Python imports
    "max_split_size_mb", // CUDA caching-allocator knobs
    "expandable_segments", //
    "cuda_load_lazy", //
    "python_log_level", //
    "log_config", //
    "metadata",  //
    "flatten_metadata", //
    "profiler",  //
    "compile_config", // torch.compile
    "spin_dataloaders", // resume is exact without spinning
    "save_latest_filename", // checkpoint layout is fixed (see ARCHITECTURE.md)
    "save_filename", //
    "save_weights_only", //
    "save_ignore_keys", //
    "load_strict_model_weights",
    "load_ignore_keys",
    "only_hf_checkpoint", // every checkpoint already holds HF-named safetensors
    "only_composer_checkpoint",
    "icl_tasks_str", // the parsed `icl_tasks` is read instead
    "eval_gauntlet_str",
    "n_gpus", // computed by llm-foundry, never set by users
    "device_train_batch_size",
    "device_train_grad_accum",
];

/// Keys inside `model:` that steer PyTorch, not the architecture.
pub const IGNORED_MODEL: &[&str] = &[
    "init_device",
    "loss_fn",
    "trust_remote_code",
    "use_auth_token",
    "use_flash_attention_2",
    "use_train_metrics",
];

/// Keys inside `train_loader:` / `eval_loader:` (PyTorch DataLoader knobs).
pub const IGNORED_LOADER: &[&str] = &[
    "num_workers",
    "pin_memory",
    "prefetch_factor",
    "persistent_workers",
    "timeout",
];

/// Keys inside a loader's `dataset:` that change nothing tessera computes (streaming's
/// download and safety tuning). The ones that change the sample order (`partition_algo`,
/// `sampling_method`, `batching_method`, `replication`…) are real fields of
/// [`super::DatasetConfig`], honoured or refused there, never ignored.
pub const IGNORED_DATASET: &[&str] = &["validate_hash", "keep_zip", "allow_unsafe_types"];

/// Keys inside one of a dataset's `streams:` that tessera ignores (streaming's per-stream
/// download tuning).
pub const IGNORED_STREAM: &[&str] = &[
    "download_retry",
    "download_timeout",
    "validate_hash",
    "keep_zip",
];

/// Removes every ignored key from `tree`, returning their paths (sorted, deduplicated).
///
/// `algorithms.gradient_clipping` is the one composer algorithm tessera implements; the caller
/// moves it out before this runs, and every other algorithm is ignored here.
pub fn strip_ignored(tree: &mut Value) -> Vec<String> {
    let mut found = Vec::new();
    let Value::Object(top) = tree else {
        return found;
    };
    for key in IGNORED_TOP_LEVEL.iter().chain(["algorithms"].iter()) {
        if let Some(v) = top.remove(*key) {
            match (*key, v) {
                ("algorithms", Value::Object(algos)) => {
                    found.extend(algos.keys().map(|k| format!("algorithms.{k}")));
                }
                ("algorithms", Value::Null) => {}
                _ => found.push(key.to_string()),
            }
        }
    }
    if let Some(Value::Object(model)) = top.get_mut("model") {
        for k in IGNORED_MODEL {
            if model.remove(*k).is_some() {
                found.push(format!("model.{k}"));
            }
        }
    }
    for loader in ["train_loader", "eval_loader"] {
        match top.get_mut(loader) {
            Some(Value::Array(items)) => {
                for item in items.iter_mut() {
                    strip_loader(item, loader, &mut found);
                }
            }
            Some(item) => strip_loader(item, loader, &mut found),
            None => {}
        }
    }
    found.sort();
    found.dedup();
    found
}

fn strip_loader(loader: &mut Value, name: &str, found: &mut Vec<String>) {
    let Value::Object(l) = loader else { return };
    for k in IGNORED_LOADER {
        if l.remove(*k).is_some() {
            found.push(format!("{name}.{k}"));
        }
    }
    let Some(Value::Object(ds)) = l.get_mut("dataset") else {
        return;
    };
    for k in IGNORED_DATASET {
        if ds.remove(*k).is_some() {
            found.push(format!("{name}.dataset.{k}"));
        }
    }
    if let Some(Value::Object(streams)) = ds.get_mut("streams") {
        for stream in streams.values_mut() {
            if let Value::Object(s) = stream {
                for k in IGNORED_STREAM {
                    if s.remove(*k).is_some() {
                        found.push(format!("{name}.dataset.streams.*.{k}"));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strips_and_lists_each_ignored_key_once() {
        let mut t = json!({
            "callbacks": {"speed_monitor": {}},
            "algorithms": {"low_precision_layernorm": {}},
            "model": {"name": "mpt_causal_lm", "init_device": "meta", "d_model": 16},
            "train_loader": {"num_workers": 8, "dataset": {"keep_zip": true, "local": "x",
                "streams": {"a": {"keep_zip": true, "local": "y"}, "b": {"keep_zip": false}}}},
            "eval_loader": [{"num_workers": 2}, {"num_workers": 2}],
            "seed": 1
        });
        let found = strip_ignored(&mut t);
        assert_eq!(
            found,
            vec![
                "algorithms.low_precision_layernorm",
                "callbacks",
                "eval_loader.num_workers",
                "model.init_device",
                "train_loader.dataset.keep_zip",
                "train_loader.dataset.streams.*.keep_zip",
                "train_loader.num_workers",
            ]
        );
        assert_eq!(t["model"], json!({"name": "mpt_causal_lm", "d_model": 16}));
        assert_eq!(
            t["train_loader"]["dataset"]["streams"]["a"],
            json!({"local": "y"})
        );
        assert_eq!(t["seed"], json!(1));
    }
}
