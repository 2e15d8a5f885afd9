//! The `model:` block: a fresh MPT from llm-foundry fields, or weights from a Hugging Face folder.
//!
//! Three spellings are accepted:
//! - llm-foundry's `name: mpt_causal_lm` plus `MptConfig` fields (`d_model`, `n_heads`, …);
//! - tessera's short `pretrained: DIR` (continued pretraining / fine-tuning from HF weights);
//! - llm-foundry's `name: hf_causal_lm` with `pretrained_model_name_or_path: DIR` and
//!   `pretrained: true|false` (false: the architecture from `config.json`, fresh weights).
//!
//! The MPT fields are kept as the mapping written in the YAML and handed to
//! `tessera_model::MptConfig` (which owns their names, defaults and validation) by
//! [`ModelSource::mpt_fields`]; tessera does not keep a second list of them here.
//!
//! LoRA fine-tuning takes llm-foundry's two keys in the same block ([`AdapterSource`]):
//! `peft_config` (a new adapter, PEFT's `LoraConfig` fields) or `pretrained_lora_id_or_path`
//! (a PEFT adapter folder to keep training).

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

use tessera_model::lora::LoraConfig;

use super::ConfigError;
use super::de::{describe, nearest};

/// The `model:` block: the base model and, for LoRA fine-tuning, the adapter that trains on it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelBlock {
    /// The base model.
    pub base: ModelSource,
    /// The adapter; with one, the base is frozen and only the adapter trains.
    pub adapter: Option<AdapterSource>,
}

/// Where a LoRA adapter comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum AdapterSource {
    /// `peft_config`: a new adapter with these settings (initialised from the run seed).
    New {
        /// The settings.
        config: LoraConfig,
        /// The mapping as written (kept for the config hash and for printing).
        raw: Value,
    },
    /// `pretrained_lora_id_or_path`: a PEFT adapter folder whose weights keep training.
    Pretrained(String),
}

const ADAPTER_KEYS: &[&str] = &["peft_config", "pretrained_lora_id_or_path"];

impl ModelBlock {
    /// Reads the `model:` block (already interpolated, ignored keys removed).
    pub fn from_tree(v: &Value) -> Result<Self, ConfigError> {
        let Value::Object(m) = v else {
            return ModelSource::from_tree(v).map(|base| ModelBlock {
                base,
                adapter: None,
            });
        };
        let mut rest = m.clone();
        let peft = rest.remove("peft_config").filter(|v| !v.is_null());
        let lora_path = rest
            .remove("pretrained_lora_id_or_path")
            .filter(|v| !v.is_null());
        let adapter = match (peft, lora_path) {
            (None, None) => None,
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid {
                    key: "model.pretrained_lora_id_or_path".into(),
                    message: "set either peft_config (a new adapter) or pretrained_lora_id_or_path \
                              (an adapter to keep training), not both: the folder's adapter_config.json \
                              already holds the settings"
                        .into(),
                });
            }
            (Some(raw), None) => {
                let config =
                    LoraConfig::from_peft_config(&raw, "model.peft_config").map_err(|e| {
                        ConfigError::Invalid {
                            key: "model.peft_config".into(),
                            message: e.to_string(),
                        }
                    })?;
                Some(AdapterSource::New { config, raw })
            }
            (None, Some(Value::String(p))) if !p.is_empty() => Some(AdapterSource::Pretrained(p)),
            (None, Some(other)) => {
                return Err(ConfigError::Invalid {
                    key: "model.pretrained_lora_id_or_path".into(),
                    message: format!("expected a PEFT adapter folder, found {}", describe(&other)),
                });
            }
        };
        Ok(ModelBlock {
            base: ModelSource::from_tree(&Value::Object(rest))?,
            adapter,
        })
    }

    /// The MPT fields of a fresh model (see [`ModelSource::mpt_fields`]).
    pub fn mpt_fields(&self) -> Option<Value> {
        self.base.mpt_fields()
    }
}

impl Serialize for ModelBlock {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // The base's keys, then the adapter's: without an adapter this is exactly the base's
        // mapping, so configs (and their hashes) from before LoRA are unchanged.
        let mut v = serde_json::to_value(&self.base).map_err(serde::ser::Error::custom)?;
        if let (Value::Object(m), Some(a)) = (&mut v, &self.adapter) {
            match a {
                AdapterSource::New { raw, .. } => m.insert("peft_config".into(), raw.clone()),
                AdapterSource::Pretrained(p) => m.insert(
                    "pretrained_lora_id_or_path".into(),
                    Value::String(p.clone()),
                ),
            };
        }
        v.serialize(s)
    }
}

/// Where the model comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSource {
    /// A new MPT built from these llm-foundry `MptConfig` fields (without `name`).
    Mpt(Map<String, Value>),
    /// A Hugging Face model folder (`config.json` + safetensors).
    Pretrained {
        /// The folder (a hub name is not fetched: tessera never downloads at run time).
        path: String,
        /// `false`: take only the architecture and initialise fresh weights.
        load_weights: bool,
        /// Fields that replace the folder's `config.json` values (llm-foundry `config_overrides`).
        config_overrides: Map<String, Value>,
    },
}

const MODEL_NAMES: &[&str] = &["mpt_causal_lm", "hf_causal_lm"];
const HF_KEYS: &[&str] = &[
    "name",
    "pretrained_model_name_or_path",
    "pretrained",
    "config_overrides",
];
const SHORT_KEYS: &[&str] = &["name", "pretrained", "config_overrides"];

impl ModelSource {
    /// Reads the `model:` block (already interpolated, ignored keys removed).
    pub fn from_tree(v: &Value) -> Result<Self, ConfigError> {
        let Value::Object(m) = v else {
            return Err(ConfigError::Invalid {
                key: "model".into(),
                message: format!("expected a mapping, found {}", describe(v)),
            });
        };
        let name = match m.get("name") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.as_str()),
            Some(other) => {
                return Err(ConfigError::Invalid {
                    key: "model.name".into(),
                    message: format!("expected a name, found {}", describe(other)),
                });
            }
        };
        if let Some(n) = name
            && !MODEL_NAMES.contains(&n)
        {
            let hint = nearest(n, MODEL_NAMES.iter().copied())
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
            return Err(ConfigError::Invalid {
                key: "model.name".into(),
                message: format!(
                    "{n:?} is not a supported model (expected `mpt_causal_lm` or `hf_causal_lm`){hint}"
                ),
            });
        }
        if let Some(k) = ADAPTER_KEYS.iter().find(|k| m.contains_key(**k)) {
            return Err(ConfigError::Invalid {
                key: format!("model.{k}"),
                message: "an adapter belongs to the model block (ModelBlock::from_tree)".into(),
            });
        }
        let overrides = |m: &Map<String, Value>| -> Result<Map<String, Value>, ConfigError> {
            match m.get("config_overrides") {
                None | Some(Value::Null) => Ok(Map::new()),
                Some(Value::Object(o)) => Ok(o.clone()),
                Some(other) => Err(ConfigError::Invalid {
                    key: "model.config_overrides".into(),
                    message: format!("expected a mapping, found {}", describe(other)),
                }),
            }
        };
        if name == Some("hf_causal_lm") {
            check_keys(m, HF_KEYS)?;
            let path = match m.get("pretrained_model_name_or_path") {
                Some(Value::String(s)) if !s.is_empty() => s.clone(),
                None | Some(Value::Null) => {
                    return Err(ConfigError::Missing {
                        key: "model.pretrained_model_name_or_path".into(),
                    });
                }
                Some(other) => {
                    return Err(ConfigError::Invalid {
                        key: "model.pretrained_model_name_or_path".into(),
                        message: format!("expected a folder path, found {}", describe(other)),
                    });
                }
            };
            let load_weights = match m.get("pretrained") {
                None | Some(Value::Null) => true,
                Some(Value::Bool(b)) => *b,
                Some(other) => {
                    return Err(ConfigError::Invalid {
                        key: "model.pretrained".into(),
                        message: format!(
                            "expected true or false with hf_causal_lm, found {}",
                            describe(other)
                        ),
                    });
                }
            };
            return Ok(ModelSource::Pretrained {
                path,
                load_weights,
                config_overrides: overrides(m)?,
            });
        }
        if let Some(p) = m.get("pretrained") {
            let Value::String(path) = p else {
                return Err(ConfigError::Invalid {
                    key: "model.pretrained".into(),
                    message: format!(
                        "expected a folder path (`pretrained: DIR`), found {}",
                        describe(p)
                    ),
                });
            };
            check_keys(m, SHORT_KEYS)?;
            return Ok(ModelSource::Pretrained {
                path: path.clone(),
                load_weights: true,
                config_overrides: overrides(m)?,
            });
        }
        let mut fields = m.clone();
        fields.remove("name");
        Ok(ModelSource::Mpt(fields))
    }

    /// The MPT fields as a JSON object, ready for `tessera_model::MptConfig::from_json_str`
    /// (`None` for a pretrained source, whose config comes from its folder).
    pub fn mpt_fields(&self) -> Option<Value> {
        match self {
            ModelSource::Mpt(m) => Some(Value::Object(m.clone())),
            ModelSource::Pretrained { .. } => None,
        }
    }
}

fn check_keys(m: &Map<String, Value>, allowed: &[&'static str]) -> Result<(), ConfigError> {
    for k in m.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(ConfigError::UnknownKey {
                key: format!("model.{k}"),
                suggestion: nearest(k, allowed.iter().copied()).map(|s| format!("model.{s}")),
            });
        }
    }
    Ok(())
}

impl Serialize for ModelSource {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ModelSource::Mpt(fields) => {
                let mut m = s.serialize_map(Some(fields.len() + 1))?;
                m.serialize_entry("name", "mpt_causal_lm")?;
                for (k, v) in fields {
                    m.serialize_entry(k, v)?;
                }
                m.end()
            }
            ModelSource::Pretrained {
                path,
                load_weights,
                config_overrides,
            } => {
                let mut m = s.serialize_map(Some(4))?;
                m.serialize_entry("name", "hf_causal_lm")?;
                m.serialize_entry("pretrained_model_name_or_path", path)?;
                m.serialize_entry("pretrained", load_weights)?;
                if !config_overrides.is_empty() {
                    m.serialize_entry("config_overrides", config_overrides)?;
                }
                m.end()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn mpt_block_keeps_fields_without_name() {
        let m = ModelSource::from_tree(
            &json!({"name": "mpt_causal_lm", "d_model": 16, "attn_config": {"attn_impl": "torch"}}),
        )
        .unwrap();
        assert_eq!(
            m.mpt_fields(),
            Some(json!({"d_model": 16, "attn_config": {"attn_impl": "torch"}}))
        );
    }

    #[test]
    fn short_and_hf_pretrained_forms() {
        assert_eq!(
            ModelSource::from_tree(&json!({"pretrained": "./hf/mpt"})).unwrap(),
            ModelSource::Pretrained {
                path: "./hf/mpt".into(),
                load_weights: true,
                config_overrides: Map::new()
            }
        );
        let m = ModelSource::from_tree(
            &json!({"name": "hf_causal_lm", "pretrained_model_name_or_path": "gpt2",
            "pretrained": false, "config_overrides": {"max_seq_len": 512}}),
        )
        .unwrap();
        match m {
            ModelSource::Pretrained {
                path,
                load_weights,
                config_overrides,
            } => {
                assert_eq!(path, "gpt2");
                assert!(!load_weights);
                assert_eq!(config_overrides["max_seq_len"], json!(512));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_name_the_model_key() {
        let e = ModelSource::from_tree(&json!({"name": "mpt_causal"}))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("model.name") && e.contains("did you mean `mpt_causal_lm`"),
            "{e}"
        );
        let e = ModelSource::from_tree(
            &json!({"name": "hf_causal_lm", "pretrained_model_name_or_pth": "x"}),
        )
        .unwrap_err();
        assert!(
            matches!(e, ConfigError::UnknownKey { ref key, ref suggestion }
            if key == "model.pretrained_model_name_or_pth"
            && suggestion.as_deref() == Some("model.pretrained_model_name_or_path")),
            "{e}"
        );
        let e = ModelSource::from_tree(&json!({"name": "hf_causal_lm"})).unwrap_err();
        assert!(matches!(e, ConfigError::Missing { .. }), "{e}");
        let e = ModelSource::from_tree(&json!({"pretrained": 3}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("model.pretrained"), "{e}");
    }

    #[test]
    fn peft_config_and_pretrained_lora_are_read_beside_any_base() {
        let b = ModelBlock::from_tree(&json!({"name": "hf_causal_lm", "pretrained_model_name_or_path": "x",
            "peft_config": {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["Wqkv", "out_proj"]}}))
        .unwrap();
        assert!(matches!(b.base, ModelSource::Pretrained { ref path, .. } if path == "x"));
        match &b.adapter {
            Some(AdapterSource::New { config, .. }) => {
                assert_eq!(config.r, 4);
                assert_eq!(config.target_modules.len(), 2);
            }
            other => panic!("{other:?}"),
        }
        // It serialises back to the keys it came from.
        let v = serde_json::to_value(&b).unwrap();
        assert_eq!(v["peft_config"]["r"], json!(4));
        assert_eq!(v["pretrained_model_name_or_path"], json!("x"));

        let b = ModelBlock::from_tree(&json!({"name": "mpt_causal_lm", "d_model": 16,
            "pretrained_lora_id_or_path": "adapters/a"}))
        .unwrap();
        assert_eq!(b.mpt_fields(), Some(json!({"d_model": 16})));
        assert_eq!(
            b.adapter,
            Some(AdapterSource::Pretrained("adapters/a".into()))
        );

        // Without an adapter the block serialises exactly as the base (old config hashes hold).
        let plain = json!({"name": "mpt_causal_lm", "d_model": 16});
        let b = ModelBlock::from_tree(&plain).unwrap();
        assert_eq!(serde_json::to_value(&b).unwrap(), plain);
    }

    #[test]
    fn adapter_errors_name_the_key() {
        let e = ModelBlock::from_tree(
            &json!({"pretrained": "x", "peft_config": {"peft_type": "LORA", "r": 0}}),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("model.peft_config") && e.contains("r"), "{e}");
        let e = ModelBlock::from_tree(
            &json!({"pretrained": "x", "peft_config": {"peft_type": "PREFIX_TUNING"}}),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("model.peft_config") && e.contains("LORA"), "{e}");
        let e = ModelBlock::from_tree(
            &json!({"pretrained": "x", "peft_config": {"peft_type": "LORA"},
            "pretrained_lora_id_or_path": "a"}),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not both"), "{e}");
        let e = ModelBlock::from_tree(&json!({"pretrained": "x", "pretrained_lora_id_or_path": 3}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("model.pretrained_lora_id_or_path"), "{e}");
    }
}
