//! What a LoRA adapter is: rank, alpha, dropout, target layers, rslora. Read from llm-foundry's
//! `model.peft_config` (the keyword arguments of `peft.LoraConfig`) and from PEFT's
//! `adapter_config.json`, written back in PEFT's format.
//!
//! Both sources are checked against one table of `peft.LoraConfig` fields (peft 0.21): the
//! fields tessera implements, the fields it accepts only at their default value (DoRA, rank
//! patterns, bias training… change the arithmetic, so any other value is refused by name), and
//! the fields that only describe the adapter (`base_model_name_or_path`, `revision`, …). A key
//! outside the table is an error naming it.

use serde_json::{Value, json};

use super::LoraError;

/// A layer of an MPT block that can carry an adapter; the names are transformers' module names,
/// which PEFT's `target_modules` match.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TargetModule {
    /// `attn.Wqkv`, the fused query/key/value projection.
    Wqkv,
    /// `attn.out_proj`.
    OutProj,
    /// `ffn.up_proj`.
    UpProj,
    /// `ffn.gate_proj` (GLU feed-forward only).
    GateProj,
    /// `ffn.down_proj`.
    DownProj,
}

impl TargetModule {
    /// Every target, in block order.
    pub const ALL: [TargetModule; 5] = [
        TargetModule::Wqkv,
        TargetModule::OutProj,
        TargetModule::UpProj,
        TargetModule::GateProj,
        TargetModule::DownProj,
    ];

    /// The name in `target_modules` (the last part of the module path).
    pub fn name(self) -> &'static str {
        match self {
            TargetModule::Wqkv => "Wqkv",
            TargetModule::OutProj => "out_proj",
            TargetModule::UpProj => "up_proj",
            TargetModule::GateProj => "gate_proj",
            TargetModule::DownProj => "down_proj",
        }
    }

    /// The module path inside a block (`attn.Wqkv`), as in transformers' state dict.
    pub fn path(self) -> &'static str {
        match self {
            TargetModule::Wqkv => "attn.Wqkv",
            TargetModule::OutProj => "attn.out_proj",
            TargetModule::UpProj => "ffn.up_proj",
            TargetModule::GateProj => "ffn.gate_proj",
            TargetModule::DownProj => "ffn.down_proj",
        }
    }

    /// The target called `name`, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// How a new adapter's weights are drawn (PEFT's `init_lora_weights`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoraInit {
    /// `true` (PEFT's default): A as `nn.Linear`'s default init (kaiming-uniform with
    /// `a = √5`, i.e. uniform in `±1/√d_in`), B zeros, so a new adapter changes nothing.
    Standard,
    /// `false`: A and B both keep `nn.Linear`'s default init (uniform in `±1/√fan_in`), so a
    /// new adapter already changes the output. PEFT uses it for tests; so does tessera.
    Random,
}

/// A LoRA adapter's settings (the part of `peft.LoraConfig` tessera implements).
#[derive(Clone, Debug, PartialEq)]
pub struct LoraConfig {
    /// Rank `r` of the update `B A`.
    pub r: usize,
    /// `lora_alpha`: the update is scaled by `alpha / r` (or `alpha / √r` with rslora).
    pub lora_alpha: f64,
    /// Dropout on the adapter's input (training only).
    pub lora_dropout: f64,
    /// The layers adapted in every block, sorted, without duplicates.
    pub target_modules: Vec<TargetModule>,
    /// Rank-stabilised LoRA: scale by `alpha / √r`.
    pub use_rslora: bool,
    /// How [`super::Adapter::init`] draws the weights.
    pub init_lora_weights: LoraInit,
}

impl Default for LoraConfig {
    /// PEFT's defaults: `r` 8, `lora_alpha` 8, no dropout, and for MPT the target modules
    /// PEFT picks when none are given (`["Wqkv"]`).
    fn default() -> Self {
        Self {
            r: 8,
            lora_alpha: 8.0,
            lora_dropout: 0.0,
            target_modules: vec![TargetModule::Wqkv],
            use_rslora: false,
            init_lora_weights: LoraInit::Standard,
        }
    }
}

/// How the table treats a field.
enum Rule {
    /// Implemented: parsed into [`LoraConfig`].
    Used,
    /// Accepted only at one of these values (each changes the arithmetic otherwise).
    DefaultOnly(&'static [&'static str]),
    /// Describes the adapter or PEFT's bookkeeping; read and ignored.
    Ignored,
}

/// Every `peft.LoraConfig` field (peft 0.21) and the serialised extras PEFT writes. Values in
/// `DefaultOnly` are JSON texts.
const FIELDS: &[(&str, Rule)] = &[
    ("peft_type", Rule::Used),
    ("task_type", Rule::Used),
    ("r", Rule::Used),
    ("lora_alpha", Rule::Used),
    ("lora_dropout", Rule::Used),
    ("target_modules", Rule::Used),
    ("use_rslora", Rule::Used),
    ("init_lora_weights", Rule::Used),
    ("bias", Rule::DefaultOnly(&["\"none\""])),
    ("fan_in_fan_out", Rule::DefaultOnly(&["false"])),
    ("use_dora", Rule::DefaultOnly(&["false"])),
    ("lora_bias", Rule::DefaultOnly(&["false"])),
    ("use_qalora", Rule::DefaultOnly(&["false"])),
    ("rank_pattern", Rule::DefaultOnly(&["null", "{}"])),
    ("alpha_pattern", Rule::DefaultOnly(&["null", "{}"])),
    ("modules_to_save", Rule::DefaultOnly(&["null", "[]"])),
    ("layers_to_transform", Rule::DefaultOnly(&["null"])),
    ("layer_replication", Rule::DefaultOnly(&["null"])),
    ("exclude_modules", Rule::DefaultOnly(&["null", "[]"])),
    ("target_parameters", Rule::DefaultOnly(&["null", "[]"])),
    ("trainable_token_indices", Rule::DefaultOnly(&["null"])),
    ("alora_invocation_tokens", Rule::DefaultOnly(&["null"])),
    ("megatron_config", Rule::DefaultOnly(&["null"])),
    ("loftq_config", Rule::DefaultOnly(&["null", "{}"])),
    ("eva_config", Rule::DefaultOnly(&["null"])),
    ("corda_config", Rule::DefaultOnly(&["null"])),
    ("lora_ga_config", Rule::DefaultOnly(&["null"])),
    ("velora_config", Rule::DefaultOnly(&["null"])),
    ("monteclora_config", Rule::DefaultOnly(&["null"])),
    ("kasa_config", Rule::DefaultOnly(&["null"])),
    ("arrow_config", Rule::DefaultOnly(&["null"])),
    ("use_bdlora", Rule::DefaultOnly(&["null"])),
    ("base_model_name_or_path", Rule::Ignored),
    ("revision", Rule::Ignored),
    ("inference_mode", Rule::Ignored),
    ("auto_mapping", Rule::Ignored),
    ("peft_version", Rule::Ignored),
    ("layers_pattern", Rule::Ignored),
    ("megatron_core", Rule::Ignored),
    ("runtime_config", Rule::Ignored),
    ("qalora_group_size", Rule::Ignored),
    ("ensure_weight_tying", Rule::Ignored),
];

impl LoraConfig {
    /// The factor on `B A x`: `alpha / r`, or `alpha / √r` with rslora (PEFT's `scaling`).
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }

    /// Whether `target` is adapted.
    pub fn targets(&self, target: TargetModule) -> bool {
        self.target_modules.contains(&target)
    }

    /// llm-foundry's `model.peft_config` (a YAML mapping, as JSON). `origin` names it in errors
    /// (`model.peft_config`); each error names the key. As in llm-foundry, `peft_type` must be
    /// `LORA` and `task_type`, when given, `CAUSAL_LM`.
    pub fn from_peft_config(v: &Value, origin: &str) -> Result<Self, LoraError> {
        parse(v, origin, true)
    }

    /// PEFT's `adapter_config.json` text; `origin` (the file) names it in errors.
    pub fn from_adapter_config(text: &str, origin: &str) -> Result<Self, LoraError> {
        let v: Value = serde_json::from_str(text).map_err(|e| LoraError::Config {
            origin: origin.into(),
            key: ".".into(),
            message: format!("not JSON: {e}"),
        })?;
        parse(&v, origin, false)
    }

    /// `adapter_config.json` as PEFT writes it, which `PeftModel.from_pretrained` reads:
    /// tessera's settings plus the other fields at PEFT's defaults.
    pub fn to_adapter_config(&self, base_model_name_or_path: Option<&str>) -> Value {
        let targets: Vec<&str> = self.target_modules.iter().map(|t| t.name()).collect();
        json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model_name_or_path,
            "revision": null,
            "inference_mode": true,
            "r": self.r,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": self.lora_dropout,
            "target_modules": targets,
            "use_rslora": self.use_rslora,
            "init_lora_weights": self.init_lora_weights == LoraInit::Standard,
            "bias": "none",
            "fan_in_fan_out": false,
            "use_dora": false,
            "lora_bias": false,
            "modules_to_save": null,
            "layers_to_transform": null,
            "layers_pattern": null,
            "rank_pattern": {},
            "alpha_pattern": {},
            "exclude_modules": null,
        })
    }
}

fn parse(v: &Value, origin: &str, needs_peft_type: bool) -> Result<LoraConfig, LoraError> {
    let err = |key: &str, message: String| LoraError::Config {
        origin: origin.into(),
        key: key.into(),
        message,
    };
    let Value::Object(map) = v else {
        return Err(err(".", format!("expected a mapping, found {v}")));
    };
    for (key, value) in map {
        match FIELDS.iter().find(|(k, _)| k == key) {
            None => {
                return Err(err(
                    key,
                    "unknown key (not a field of peft.LoraConfig)".into(),
                ));
            }
            Some((_, Rule::DefaultOnly(allowed))) => {
                let ok = allowed
                    .iter()
                    .any(|a| serde_json::from_str::<Value>(a).ok().as_ref() == Some(value));
                if !ok {
                    return Err(err(
                        key,
                        format!(
                            "{value} is not supported by tessera (only {}): tessera implements plain LoRA",
                            allowed.join(" or ")
                        ),
                    ));
                }
            }
            Some(_) => {}
        }
    }
    let mut cfg = LoraConfig::default();
    match map.get("peft_type") {
        Some(Value::String(s)) if s.eq_ignore_ascii_case("lora") => {}
        None if !needs_peft_type => {}
        Some(other) => {
            return Err(err(
                "peft_type",
                format!("{other} is not supported: only LORA"),
            ));
        }
        None => return Err(err("peft_type", "missing (must be LORA)".into())),
    }
    match map.get("task_type") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s.eq_ignore_ascii_case("causal_lm") => {}
        Some(other) => {
            return Err(err(
                "task_type",
                format!("{other} is not supported: only CAUSAL_LM"),
            ));
        }
    }
    if let Some(r) = map.get("r") {
        cfg.r = match r.as_u64() {
            Some(n) if n > 0 => n as usize,
            _ => return Err(err("r", format!("{r} is not a positive integer"))),
        };
    }
    if let Some(a) = map.get("lora_alpha") {
        cfg.lora_alpha = match a.as_f64() {
            Some(x) if x.is_finite() => x,
            _ => return Err(err("lora_alpha", format!("{a} is not a number"))),
        };
    }
    if let Some(p) = map.get("lora_dropout") {
        cfg.lora_dropout = match p.as_f64() {
            Some(x) if (0.0..1.0).contains(&x) => x,
            _ => {
                return Err(err(
                    "lora_dropout",
                    format!("{p} is not a probability in [0, 1)"),
                ));
            }
        };
    }
    if let Some(t) = map.get("target_modules") {
        cfg.target_modules = targets(t).map_err(|m| err("target_modules", m))?;
    }
    if let Some(b) = map.get("use_rslora") {
        cfg.use_rslora = b
            .as_bool()
            .ok_or_else(|| err("use_rslora", format!("{b} is not true or false")))?;
    }
    if let Some(i) = map.get("init_lora_weights") {
        cfg.init_lora_weights = match i {
            Value::Bool(true) => LoraInit::Standard,
            Value::Bool(false) => LoraInit::Random,
            other => {
                return Err(err(
                    "init_lora_weights",
                    format!("{other} is not supported (only true or false)"),
                ));
            }
        };
    }
    Ok(cfg)
}

/// `target_modules`: a list of MPT layer names, `"all-linear"` (every adapted layer kind but the
/// unembedding, as PEFT), or null (PEFT's choice for MPT, `["Wqkv"]`).
fn targets(v: &Value) -> Result<Vec<TargetModule>, String> {
    let names = match v {
        Value::Null => return Ok(LoraConfig::default().target_modules),
        Value::String(s) if s == "all-linear" => return Ok(TargetModule::ALL.to_vec()),
        Value::String(s) => {
            return Err(format!(
                "{s:?}: a string is a regular expression over full module paths in PEFT, which tessera does not evaluate; give a list of names ({}) or \"all-linear\"",
                names_list()
            ));
        }
        Value::Array(items) => items,
        other => return Err(format!("{other} is not a list of module names")),
    };
    let mut out = Vec::new();
    for n in names {
        let t = n
            .as_str()
            .and_then(TargetModule::from_name)
            .ok_or_else(|| format!("{n} is not an MPT layer (expected {})", names_list()))?;
        out.push(t);
    }
    if out.is_empty() {
        return Err("is empty: the adapter would change nothing".into());
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn names_list() -> String {
    TargetModule::ALL.map(|t| t.name()).join(", ")
}

/// The keys of a JSON object (for the tests).
#[cfg(test)]
fn keys(v: &Value) -> Vec<String> {
    v.as_object()
        .map(serde_json::Map::keys)
        .into_iter()
        .flatten()
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peft_config_keys_parse_with_peft_defaults() {
        let c = LoraConfig::from_peft_config(
            &json!({"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 4, "lora_alpha": 16,
                    "lora_dropout": 0.05, "target_modules": ["up_proj", "Wqkv", "Wqkv"]}),
            "model.peft_config",
        )
        .unwrap();
        assert_eq!(c.r, 4);
        assert_eq!(c.scale(), 4.0);
        assert_eq!(c.lora_dropout, 0.05);
        assert_eq!(
            c.target_modules,
            vec![TargetModule::Wqkv, TargetModule::UpProj]
        );
        let d = LoraConfig::from_peft_config(&json!({"peft_type": "lora"}), "x").unwrap();
        assert_eq!(d, LoraConfig::default());
        let rs = LoraConfig::from_peft_config(
            &json!({"peft_type": "LORA", "r": 16, "lora_alpha": 8, "use_rslora": true,
                    "target_modules": "all-linear"}),
            "x",
        )
        .unwrap();
        assert_eq!(rs.scale(), 2.0);
        assert_eq!(rs.target_modules.len(), 5);
    }

    #[test]
    fn bad_keys_and_values_are_named() {
        let cases = [
            (json!({"r": 8}), "peft_type", "missing"),
            (json!({"peft_type": "IA3"}), "peft_type", "only LORA"),
            (
                json!({"peft_type": "LORA", "task_type": "SEQ_CLS"}),
                "task_type",
                "CAUSAL_LM",
            ),
            (json!({"peft_type": "LORA", "r": 0}), "r", "positive"),
            (
                json!({"peft_type": "LORA", "lora_dropout": 1.0}),
                "lora_dropout",
                "[0, 1)",
            ),
            (
                json!({"peft_type": "LORA", "target_modules": ["q_proj"]}),
                "target_modules",
                "not an MPT layer",
            ),
            (
                json!({"peft_type": "LORA", "target_modules": ".*Wqkv"}),
                "target_modules",
                "regular expression",
            ),
            (
                json!({"peft_type": "LORA", "use_dora": true}),
                "use_dora",
                "plain LoRA",
            ),
            (
                json!({"peft_type": "LORA", "rank_pattern": {"Wqkv": 4}}),
                "rank_pattern",
                "not supported",
            ),
            (
                json!({"peft_type": "LORA", "init_lora_weights": "pissa"}),
                "init_lora_weights",
                "only true or false",
            ),
            (
                json!({"peft_type": "LORA", "rank": 8}),
                "rank",
                "unknown key",
            ),
        ];
        for (v, key, needle) in cases {
            let e = LoraConfig::from_peft_config(&v, "model.peft_config")
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with(&format!("model.peft_config: {key}: ")),
                "{e} should name {key}"
            );
            assert!(e.contains(needle), "{e} should mention {needle}");
        }
    }

    #[test]
    fn adapter_config_round_trips() {
        let c = LoraConfig {
            r: 2,
            lora_alpha: 5.0,
            lora_dropout: 0.1,
            target_modules: vec![TargetModule::Wqkv, TargetModule::DownProj],
            use_rslora: true,
            init_lora_weights: LoraInit::Random,
        };
        let v = c.to_adapter_config(Some("base"));
        assert!(keys(&v).iter().all(|k| FIELDS.iter().any(|(f, _)| f == k)));
        let back = LoraConfig::from_adapter_config(&v.to_string(), "adapter_config.json").unwrap();
        assert_eq!(back, c);
    }
}
