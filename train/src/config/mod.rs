//! Training configs in llm-foundry's YAML, loaded once and checked once.
//!
//! The pipeline, in order:
//! 1. parse the YAML ([`yaml`]) into a tree;
//! 2. apply `--set key.path=value` overrides (before interpolation, so `--set
//!    variables.max_seq_len=256` reaches every `${variables.max_seq_len}`, as OmegaConf's CLI
//!    merge does);
//! 3. resolve `${…}` interpolations ([`interpolate`]) and drop `variables:` (and top-level keys
//!    that only serve as `${x}` variables, the pre-`variables:` llm-foundry style);
//! 4. move `algorithms.gradient_clipping` to `gradient_clipping`, then remove the llm-foundry
//!    keys tessera deliberately ignores ([`ignored`]), remembering them for one warning;
//! 5. map the tree onto [`TrainConfig`] with unknown keys refused, each error naming its full key
//!    path and the nearest valid key;
//! 6. check values that serde cannot (ranges, combinations).

pub mod de;
pub mod duration;
pub mod fsdp;
pub mod ignored;
pub mod interpolate;
pub mod model;
pub mod schema;
pub mod yaml;

use std::path::{Path, PathBuf};

use serde_json::Value;

pub use duration::{Duration, DurationError, TimeContext};
pub use fsdp::{FsdpConfig, FsdpPrecision, StateDictType};
pub use interpolate::InterpolationError;
pub use model::{AdapterSource, ModelBlock, ModelSource};
pub use schema::{
    DatasetConfig, LoaderConfig, LoaderKind, MicroBatchSize, Precision, StreamConfig,
    TokenizerConfig, TrainConfig,
};
pub use yaml::YamlError;

use de::{DeError, from_tree, nearest, quoted_list, struct_fields};

/// Everything that can be wrong with a config. Each variant names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Invalid YAML, or a malformed `--set`.
    #[error(transparent)]
    Yaml(#[from] YamlError),
    /// A `${…}` that cannot be resolved.
    #[error(transparent)]
    Interpolation(#[from] InterpolationError),
    /// A key that is neither in the schema nor on the ignored list.
    #[error("unknown key `{key}`{}", unknown_hint(.key, .suggestion))]
    UnknownKey {
        /// Full path (`optimizer.lrr`).
        key: String,
        /// The nearest valid key, if one is close.
        suggestion: Option<String>,
    },
    /// A required key is absent.
    #[error("{key}: required key is missing")]
    Missing {
        /// Full path.
        key: String,
    },
    /// A value of the wrong type or out of range.
    #[error("{key}: {message}")]
    Invalid {
        /// Full path.
        key: String,
        /// What is wrong, with the expected form.
        message: String,
    },
}

fn unknown_hint(key: &str, suggestion: &Option<String>) -> String {
    match suggestion {
        Some(s) => format!(" (did you mean `{s}`?)"),
        None if !key.contains('.') => " (put your own variables under `variables:`)".to_string(),
        None => String::new(),
    }
}

/// A loaded config plus what was read but deliberately not acted on.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedConfig {
    /// The typed, validated config.
    pub config: TrainConfig,
    /// llm-foundry keys present in the YAML that tessera ignores (sorted paths).
    pub ignored_keys: Vec<String>,
}

impl LoadedConfig {
    /// The single warning that lists every ignored key, or `None` if there were none.
    pub fn ignored_warning(&self) -> Option<String> {
        if self.ignored_keys.is_empty() {
            return None;
        }
        Some(format!(
            "tessera ignores these llm-foundry keys (they steer PyTorch/composer machinery tessera replaces): {}",
            self.ignored_keys.join(", ")
        ))
    }
}

/// Loads a YAML file, applying `--set` overrides.
pub fn load_file(path: &Path, overrides: &[String]) -> Result<LoadedConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    load_str(&text, &path.display().to_string(), overrides)
}

/// Loads YAML text (`origin` names it in errors), applying `--set` overrides.
pub fn load_str(
    text: &str,
    origin: &str,
    overrides: &[String],
) -> Result<LoadedConfig, ConfigError> {
    let mut tree = yaml::parse(text, origin)?;
    yaml::apply_overrides(&mut tree, overrides)?;
    let roots = interpolate::referenced_roots(&tree);
    let mut tree = interpolate::resolve(&tree)?;
    let top_fields = struct_fields::<TrainConfig>();
    if let Value::Object(top) = &mut tree {
        top.remove("variables");
        // Pre-`variables:` YAMLs keep variables at the top level; those that are referenced and
        // are not config keys are variables, not typos.
        top.retain(|k, _| top_fields.contains(&k.as_str()) || !roots.contains(k));
        hoist_gradient_clipping(top)?;
    }
    let ignored_keys = ignored::strip_ignored(&mut tree);
    if let Some(m) = tree.get("model") {
        ModelBlock::from_tree(m)?;
    }
    let config: TrainConfig = from_tree(&tree).map_err(|(path, e)| map_de_error(path, e))?;
    config.validate()?;
    if let Some(mpt) = config.mpt_config()?
        && mpt.max_seq_len < config.max_seq_len
    {
        return Err(invalid(
            "max_seq_len",
            format!(
                "{} exceeds model.max_seq_len ({}); the model cannot attend that far",
                config.max_seq_len, mpt.max_seq_len
            ),
        ));
    }
    Ok(LoadedConfig {
        config,
        ignored_keys,
    })
}

/// llm-foundry writes clipping as a composer algorithm; tessera keeps it as a top-level block.
fn hoist_gradient_clipping(top: &mut serde_json::Map<String, Value>) -> Result<(), ConfigError> {
    let Some(Value::Object(algos)) = top.get_mut("algorithms") else {
        return Ok(());
    };
    let Some(clip) = algos.remove("gradient_clipping") else {
        return Ok(());
    };
    if top.contains_key("gradient_clipping") {
        return Err(ConfigError::Invalid {
            key: "algorithms.gradient_clipping".into(),
            message:
                "gradient clipping is set both here and as top-level `gradient_clipping`; keep one"
                    .into(),
        });
    }
    top.insert("gradient_clipping".into(), clip);
    Ok(())
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn map_de_error(path: String, e: DeError) -> ConfigError {
    match e {
        DeError::UnknownField { field, expected } => {
            // serde_path_to_error's path already ends with the unknown key.
            let parent = path
                .strip_suffix(&field)
                .map(|p| p.trim_end_matches('.'))
                .unwrap_or(&path);
            let key = join(parent, &field);
            let suggestion = nearest(&field, expected.iter().copied()).map(|s| join(parent, s));
            ConfigError::UnknownKey { key, suggestion }
        }
        DeError::UnknownVariant { variant, expected } => {
            let hint = nearest(&variant, expected.iter().copied())
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
            ConfigError::Invalid {
                key: path,
                message: format!("{variant:?} is not one of {}{hint}", quoted_list(expected)),
            }
        }
        DeError::MissingField { field } => ConfigError::Missing {
            key: join(&path, field),
        },
        DeError::Custom(message) => ConfigError::Invalid {
            key: if path.is_empty() {
                "<top level>".into()
            } else {
                path
            },
            message,
        },
    }
}

/// The model crate's errors, re-keyed under `model.`.
fn model_error(e: tessera_model::ConfigError) -> ConfigError {
    use tessera_model::ConfigError as M;
    let key = |field: &str| {
        if field == "." || field.is_empty() {
            "model".to_string()
        } else {
            format!("model.{field}")
        }
    };
    match e {
        M::UnknownKey { field, .. } => ConfigError::UnknownKey {
            key: key(&field),
            suggestion: None,
        },
        M::Parse { field, message, .. } | M::Invalid { field, message, .. } => {
            ConfigError::Invalid {
                key: key(&field),
                message,
            }
        }
        M::Unsupported {
            field,
            value,
            reason,
            ..
        } => ConfigError::Invalid {
            key: key(&field),
            message: format!("{value} is not supported by tessera ({reason})"),
        },
        other => ConfigError::Invalid {
            key: "model".into(),
            message: other.to_string(),
        },
    }
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        message: message.into(),
    }
}

impl TrainConfig {
    /// Checks ranges and combinations that the types alone cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.global_train_batch_size == 0 {
            return Err(invalid("global_train_batch_size", "must be at least 1"));
        }
        if self.max_seq_len == 0 {
            return Err(invalid("max_seq_len", "must be at least 1"));
        }
        if let MicroBatchSize::Fixed(m) = self.device_train_microbatch_size
            && m > self.global_train_batch_size
        {
            return Err(invalid(
                "device_train_microbatch_size",
                format!(
                    "{m} is larger than global_train_batch_size ({})",
                    self.global_train_batch_size
                ),
            ));
        }
        if self.device_eval_batch_size == Some(0) {
            return Err(invalid("device_eval_batch_size", "must be at least 1"));
        }
        if let Duration::Fraction(_) = self.max_duration {
            return Err(invalid(
                "max_duration",
                format!(
                    "\"{}\" is relative to max_duration itself (expected e.g. 100ba, 2ep, 1e9tok)",
                    self.max_duration
                ),
            ));
        }
        if self.max_duration_is_zero() {
            return Err(invalid("max_duration", "must be longer than zero"));
        }
        for (key, d) in [
            ("eval_interval", self.eval_interval),
            ("save_interval", self.save_interval),
            ("console_log_interval", self.console_log_interval),
        ] {
            if matches!(d, Duration::Fraction(f) if f <= 0.0 || f > 1.0) {
                return Err(invalid(
                    key,
                    format!("\"{d}\" must be a fraction in (0, 1]"),
                ));
            }
        }
        if self.save_num_checkpoints_to_keep < -1 {
            return Err(invalid(
                "save_num_checkpoints_to_keep",
                "must be -1 (keep all) or a count ≥ 0",
            ));
        }
        if self.eval_subset_num_batches < -1 || self.eval_subset_num_batches == 0 {
            return Err(invalid(
                "eval_subset_num_batches",
                "must be -1 (all) or a count ≥ 1",
            ));
        }
        if self.train_subset_num_batches < -1 || self.train_subset_num_batches == 0 {
            return Err(invalid(
                "train_subset_num_batches",
                "must be -1 (all) or a count ≥ 1",
            ));
        }
        if !self.accumulate_train_batch_on_tokens {
            return Err(invalid(
                "accumulate_train_batch_on_tokens",
                "tessera always weights microbatches by their loss-generating tokens; only `true` is supported",
            ));
        }
        if self.tokenizer.name.trim().is_empty() {
            return Err(invalid(
                "tokenizer.name",
                "must name a tokenizer.json file or folder",
            ));
        }
        let mut loaders = vec![("train_loader".to_string(), &self.train_loader)];
        for (i, l) in self.eval_loader.iter().enumerate() {
            let key = if self.eval_loader.len() == 1 {
                "eval_loader".to_string()
            } else {
                format!("eval_loader[{i}]")
            };
            loaders.push((key, l));
        }
        for (key, l) in loaders {
            let ds = &l.dataset;
            if let Some(n) = ds.max_seq_len
                && n != self.max_seq_len
                && l.name == LoaderKind::Text
            {
                return Err(invalid(
                    &format!("{key}.dataset.max_seq_len"),
                    format!(
                        "{n} differs from max_seq_len ({}); packed text data must match the model's sequence length",
                        self.max_seq_len
                    ),
                ));
            }
            if ds.local.is_none()
                && ds.remote.is_none()
                && ds.streams.is_none()
                && ds.hf_name.is_none()
            {
                return Err(invalid(
                    &format!("{key}.dataset"),
                    "names no data: set `local`, `remote`, `streams` or `hf_name`",
                ));
            }
        }
        if self.eval_loader.len() > 1 && self.eval_loader.iter().any(|l| l.label.is_none()) {
            return Err(invalid(
                "eval_loader",
                "with several eval loaders, each needs a `label`",
            ));
        }
        self.optimizer
            .validate()
            .map_err(|e| invalid(&format!("optimizer.{}", e.key()), e.message()))?;
        self.scheduler
            .validate()
            .map_err(|e| invalid(&format!("scheduler.{}", e.key()), e.message()))?;
        if let Some(c) = &self.gradient_clipping {
            c.validate()
                .map_err(|(k, m)| invalid(&format!("gradient_clipping.{k}"), m))?;
        }
        self.guards
            .validate()
            .map_err(|(k, m)| invalid(&format!("guards.{k}"), m))?;
        Ok(())
    }

    fn max_duration_is_zero(&self) -> bool {
        matches!(
            self.max_duration,
            Duration::Epochs(0) | Duration::Batches(0) | Duration::Samples(0) | Duration::Tokens(0)
        )
    }

    /// The model architecture for `name: mpt_causal_lm` (`None` for a pretrained folder, whose
    /// `config.json` decides), read and validated by `tessera_model::MptConfig`.
    pub fn mpt_config(&self) -> Result<Option<tessera_model::MptConfig>, ConfigError> {
        let Some(fields) = self.model.mpt_fields() else {
            return Ok(None);
        };
        let mpt = tessera_model::MptConfig::from_json_str(&fields.to_string(), "model")
            .map_err(model_error)?;
        mpt.validate().map_err(model_error)?;
        Ok(Some(mpt))
    }

    /// Batch shape for duration conversion. `batches_per_epoch` comes from the dataset, if known.
    pub fn time_context(&self, batches_per_epoch: Option<u64>) -> TimeContext {
        TimeContext {
            tokens_per_batch: (self.global_train_batch_size * self.max_seq_len) as u64,
            samples_per_batch: self.global_train_batch_size as u64,
            batches_per_epoch,
            max_duration: Some(self.max_duration),
        }
    }

    /// Total optimizer steps of the run.
    pub fn max_batches(&self, batches_per_epoch: Option<u64>) -> Result<u64, ConfigError> {
        self.max_duration
            .whole_batches(&self.time_context(batches_per_epoch))
            .map_err(|e| invalid("max_duration", e.to_string()))
    }

    /// The eval batch size llm-foundry would use: the configured one, else the train microbatch
    /// size, else 1 when that is `auto`.
    pub fn eval_batch_size(&self) -> usize {
        match (
            self.device_eval_batch_size,
            self.device_train_microbatch_size,
        ) {
            (Some(n), _) => n,
            (None, MicroBatchSize::Fixed(n)) => n,
            (None, MicroBatchSize::Auto) => 1,
        }
    }

    /// The resolved config as YAML (what `runs/<name>/config.yaml` holds).
    pub fn to_yaml(&self) -> Result<String, ConfigError> {
        serde_saphyr::to_string(self)
            .map_err(|e| invalid("<config>", format!("cannot write as YAML: {e}")))
    }
}

#[cfg(test)]
mod tests;
