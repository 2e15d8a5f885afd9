//! Global-norm gradient clipping over all parameters at once, as `torch.nn.utils.clip_grad_norm_`
//! (which composer's `gradient_clipping: {clipping_type: norm}` calls). The config lives here;
//! the norm is computed over every rank's shards ([`crate::parallel::shard`]).
//!
//! burn's `GradientClippingConfig::Norm` clips each tensor by its own norm, which changes the
//! direction of the update; GPT/MPT recipes clip the concatenation of all gradients:
//! ```text
//! n = √(Σ_params Σ g²)        coef = min(1, max_norm / (n + 1e-6))        g ← coef · g
//! ```

use serde::{Deserialize, Serialize};

/// The `gradient_clipping:` block (`algorithms.gradient_clipping` in llm-foundry YAMLs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GradientClippingConfig {
    /// Only `norm` (composer's `adaptive` and `value` are not implemented).
    pub clipping_type: String,
    /// The maximum global L2 norm.
    pub clipping_threshold: f64,
}

impl GradientClippingConfig {
    /// `(key, message)` for the first bad field.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.clipping_type != "norm" {
            return Err((
                "clipping_type".into(),
                format!(
                    "{:?} is not supported (expected `norm`; composer's `adaptive` and `value` are not implemented)",
                    self.clipping_type
                ),
            ));
        }
        if !(self.clipping_threshold.is_finite() && self.clipping_threshold > 0.0) {
            return Err((
                "clipping_threshold".into(),
                format!("{} must be a positive number", self.clipping_threshold),
            ));
        }
        Ok(())
    }
}
