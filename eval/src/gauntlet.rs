//! The eval gauntlet: llm-foundry's composite scores over ICL benchmarks.
//!
//! Reproduces `llmfoundry/callbacks/eval_gauntlet_callback.py` (`EvalGauntlet`):
//! 1. Each benchmark's accuracy is read under `"{name}/{num_fewshot}-shot"`; results of a
//!    benchmark split into categories (`"mmlu/5-shot/anatomy"`) are averaged, each category
//!    counting once.
//! 2. With `subtract_random_baseline` the benchmark's `random_baseline` is subtracted, and with
//!    `rescale_accuracy` the result is divided by `1 - random_baseline`, so chance is 0 and a
//!    perfect score 1.
//! 3. A category is the weighted mean of its benchmarks' scores. Weights are 1 (`EQUAL`), the
//!    benchmark's sample count (`SAMPLE_SZ`), or `max(log2(count), 1)` (`LOG_SAMPLE_SZ`); the
//!    count sums every result label starting with `"{name}/{num_fewshot}-shot"`, at least 1.
//! 4. A category with any benchmark missing is dropped (reported in
//!    [`GauntletReport::dropped`], as llm-foundry logs a warning).
//! 5. Each named average is the plain mean of its categories that were not dropped (0 when
//!    none remain, as llm-foundry); without `averages`, `default_average` covers every category.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::icl::yaml::{check_keys, load_yaml_file};

/// Errors from reading or applying a gauntlet definition.
#[derive(Debug, thiserror::Error)]
pub enum GauntletError {
    /// Reading or interpolating the YAML failed, or a block has an unknown key.
    #[error("{0}")]
    Yaml(#[from] crate::icl::IclError),
    /// The definition is malformed or inconsistent (e.g. a category defined twice).
    #[error("{origin}: {context}: {message}")]
    Invalid {
        /// The file it came from.
        origin: PathBuf,
        /// Where in the definition, e.g. `eval_gauntlet` or `categories.NAME.BENCHMARK`.
        context: String,
        /// What is wrong.
        message: String,
    },
}

/// How benchmarks are weighted inside a category.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Weighting {
    /// Every benchmark weighs 1 (`EQUAL`).
    #[serde(rename = "EQUAL")]
    Equal,
    /// Weight by the benchmark's number of examples (`SAMPLE_SZ`).
    #[serde(rename = "SAMPLE_SZ")]
    SampleSize,
    /// Weight by `max(log2(examples), 1)` (`LOG_SAMPLE_SZ`).
    #[serde(rename = "LOG_SAMPLE_SZ")]
    LogSampleSize,
}

/// One benchmark of a category.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Benchmark {
    /// The ICL task's label.
    pub name: String,
    /// Which few-shot result of it counts.
    pub num_fewshot: usize,
    /// Accuracy of random guessing (0.25 for four choices).
    pub random_baseline: f64,
}

impl Benchmark {
    /// The result key: `"{name}/{num_fewshot}-shot"`.
    pub fn key(&self) -> String {
        format!("{}/{}-shot", self.name, self.num_fewshot)
    }
}

/// A named group of benchmarks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Category {
    /// The category's name, unique in the gauntlet.
    pub name: String,
    /// Its benchmarks; all must have results for the category to be scored.
    pub benchmarks: Vec<Benchmark>,
}

/// A gauntlet definition (the `eval_gauntlet` block of llm-foundry's YAML).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GauntletConfig {
    /// How benchmarks are weighted inside a category (default `EQUAL`).
    #[serde(default = "equal")]
    pub weighting: Weighting,
    /// Subtract each benchmark's `random_baseline` from its accuracy (default true).
    #[serde(default = "yes")]
    pub subtract_random_baseline: bool,
    /// Then divide by `1 - random_baseline`, so a perfect score is 1 (default true).
    #[serde(default = "yes")]
    pub rescale_accuracy: bool,
    /// The categories, in report order.
    pub categories: Vec<Category>,
    /// Named averages over categories (sorted by name). Categories named here but not defined
    /// are allowed, as llm-foundry allows them (its own `eval_gauntlet.yaml` averages a
    /// commented-out `programming` category); they simply never contribute.
    #[serde(default)]
    pub averages: Option<BTreeMap<String, Vec<String>>>,
}

fn equal() -> Weighting {
    Weighting::Equal
}
fn yes() -> bool {
    true
}

impl GauntletConfig {
    /// Parses an `eval_gauntlet` block (already interpolated) and checks it as llm-foundry's
    /// constructor does.
    pub fn from_value(v: &Value, origin: &Path) -> Result<Self, GauntletError> {
        let invalid = |context: &str, message: String| GauntletError::Invalid {
            origin: origin.to_path_buf(),
            context: context.to_string(),
            message,
        };
        let map = v
            .as_object()
            .ok_or_else(|| invalid("eval_gauntlet", "expected a mapping".into()))?;
        check_keys(
            map,
            &[
                "weighting",
                "subtract_random_baseline",
                "rescale_accuracy",
                "categories",
                "averages",
            ],
            "eval_gauntlet",
            origin,
        )?;
        let cfg: Self = serde_json::from_value(v.clone())
            .map_err(|e| invalid("eval_gauntlet", e.to_string()))?;
        if cfg.rescale_accuracy && !cfg.subtract_random_baseline {
            return Err(invalid(
                "eval_gauntlet",
                "rescale_accuracy needs subtract_random_baseline (llm-foundry refuses it too)"
                    .into(),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for c in &cfg.categories {
            if !names.insert(c.name.as_str()) {
                return Err(invalid(
                    "categories",
                    format!("category `{}` appears twice", c.name),
                ));
            }
            for b in &c.benchmarks {
                if !(0.0..1.0).contains(&b.random_baseline) && cfg.rescale_accuracy {
                    return Err(invalid(
                        &format!("categories.{}.{}", c.name, b.name),
                        format!(
                            "random_baseline {} must be in [0, 1) to rescale",
                            b.random_baseline
                        ),
                    ));
                }
            }
        }
        for avg in cfg.averages.iter().flat_map(|a| a.keys()) {
            if names.contains(avg.as_str()) {
                return Err(invalid(
                    "averages",
                    format!("average `{avg}` has a category's name; they must differ"),
                ));
            }
        }
        Ok(cfg)
    }

    /// Loads a gauntlet YAML file (with a top-level `eval_gauntlet` key, as llm-foundry's).
    pub fn from_file(path: &Path) -> Result<Self, GauntletError> {
        let tree = load_yaml_file(path)?;
        let block = tree
            .get("eval_gauntlet")
            .ok_or_else(|| GauntletError::Invalid {
                origin: path.to_path_buf(),
                context: "top level".into(),
                message: "missing `eval_gauntlet`".into(),
            })?;
        Self::from_value(block, path)
    }

    /// The named averages, or `default_average` over every category.
    pub fn named_averages(&self) -> Vec<(String, Vec<String>)> {
        match &self.averages {
            Some(a) => a.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            None => vec![(
                "default_average".to_string(),
                self.categories.iter().map(|c| c.name.clone()).collect(),
            )],
        }
    }
}

/// One ICL result fed to the gauntlet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchmarkResult {
    /// `"{label}/{n}-shot"` or `"{label}/{n}-shot/{category}"`.
    pub label: String,
    /// The result's accuracy, in [0, 1].
    pub accuracy: f64,
    /// Number of examples evaluated.
    pub num_samples: usize,
}

/// A category's score, or why it has none.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CategoryScore {
    /// The category's name.
    pub name: String,
    /// `None` when the category was dropped.
    pub score: Option<f64>,
    /// Benchmarks without results (non-empty exactly when dropped).
    pub missing: Vec<String>,
    /// (benchmark key, rescaled score, weight) of the benchmarks present.
    pub benchmarks: Vec<(String, f64, f64)>,
}

/// The gauntlet's output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GauntletReport {
    /// Every category of the config, in config order, dropped ones included.
    pub categories: Vec<CategoryScore>,
    /// Named averages, sorted by name.
    pub averages: Vec<(String, f64)>,
    /// Names of dropped categories with their missing benchmarks, for the report.
    pub dropped: Vec<(String, Vec<String>)>,
}

impl GauntletReport {
    /// llm-foundry's logged metrics: `icl/metrics/eval_gauntlet/{name}` for each kept category
    /// and each average.
    pub fn metrics(&self) -> BTreeMap<String, f64> {
        let cats = self
            .categories
            .iter()
            .filter_map(|c| c.score.map(|s| (c.name.clone(), s)));
        cats.chain(self.averages.iter().cloned())
            .map(|(k, v)| (format!("icl/metrics/eval_gauntlet/{k}"), v))
            .collect()
    }
}

/// Computes the gauntlet over `results`. Returns `None` when there are no results at all
/// (llm-foundry logs nothing then).
pub fn compute(cfg: &GauntletConfig, results: &[BenchmarkResult]) -> Option<GauntletReport> {
    if results.is_empty() {
        return None;
    }
    // "name/N-shot[/category]" -> mean over categories, keyed by "name/N-shot".
    let mut grouped: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for r in results {
        let key: Vec<&str> = r.label.split('/').take(2).collect();
        grouped.entry(key.join("/")).or_default().push(r.accuracy);
    }
    let computed: BTreeMap<String, f64> = grouped
        .into_iter()
        .map(|(k, v)| (k, v.iter().sum::<f64>() / v.len() as f64))
        .collect();

    let weight = |b: &Benchmark| -> f64 {
        let count = || {
            let prefix = b.key();
            let n: usize = results
                .iter()
                .filter(|r| r.label.starts_with(&prefix))
                .map(|r| r.num_samples)
                .sum();
            n.max(1) as f64
        };
        match cfg.weighting {
            Weighting::Equal => 1.0,
            Weighting::SampleSize => count(),
            Weighting::LogSampleSize => count().log2().max(1.0),
        }
    };

    let mut categories = Vec::new();
    let mut dropped = Vec::new();
    for c in &cfg.categories {
        let mut present = Vec::new();
        let mut missing = Vec::new();
        for b in &c.benchmarks {
            let key = b.key();
            match computed.get(&key) {
                None => missing.push(key),
                Some(&acc) => {
                    let mut score = acc;
                    if cfg.subtract_random_baseline {
                        score -= b.random_baseline;
                    }
                    if cfg.rescale_accuracy && cfg.subtract_random_baseline {
                        score /= 1.0 - b.random_baseline;
                    }
                    present.push((key, score, weight(b)));
                }
            }
        }
        let score = if missing.is_empty() {
            let total: f64 = present.iter().map(|(_, _, w)| w).sum();
            Some(present.iter().map(|(_, s, w)| s * (w / total)).sum())
        } else {
            dropped.push((c.name.clone(), missing.clone()));
            None
        };
        categories.push(CategoryScore {
            name: c.name.clone(),
            score,
            missing,
            benchmarks: present,
        });
    }

    let averages = cfg
        .named_averages()
        .into_iter()
        .map(|(name, members)| {
            let scores: Vec<f64> = categories
                .iter()
                .filter(|c| members.contains(&c.name))
                .filter_map(|c| c.score)
                .collect();
            let avg = if scores.is_empty() {
                0.0
            } else {
                scores.iter().sum::<f64>() / scores.len() as f64
            };
            (name, avg)
        })
        .collect();
    Some(GauntletReport {
        categories,
        averages,
        dropped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::icl::yaml::parse_yaml;

    fn cfg(yaml: &str) -> GauntletConfig {
        let p = Path::new("g.yaml");
        GauntletConfig::from_value(&parse_yaml(yaml, p).unwrap(), p).unwrap()
    }

    fn res(label: &str, accuracy: f64, num_samples: usize) -> BenchmarkResult {
        BenchmarkResult {
            label: label.into(),
            accuracy,
            num_samples,
        }
    }

    const TWO_CATS: &str = "
weighting: EQUAL
categories:
- name: wk
  benchmarks:
  - {name: arc, num_fewshot: 3, random_baseline: 0.25}
  - {name: jeopardy, num_fewshot: 3, random_baseline: 0}
- name: lu
  benchmarks:
  - {name: lambada, num_fewshot: 0, random_baseline: 0.0}
averages:
  core: [wk, lu]
  only_wk: [wk]
";

    #[test]
    fn equal_weighting_subtracts_baseline_and_rescales() {
        let g = cfg(TWO_CATS);
        let r = compute(
            &g,
            &[
                res("arc/3-shot", 0.625, 100),
                res("jeopardy/3-shot", 0.2, 50),
                res("lambada/0-shot", 0.4, 10),
            ],
        )
        .unwrap();
        // arc: (0.625 - 0.25) / 0.75 = 0.5; jeopardy 0.2; wk = 0.35; lu = 0.4; core = 0.375.
        let wk = r.categories[0].score.unwrap();
        assert!((wk - 0.35).abs() < 1e-12, "{wk}");
        assert_eq!(r.averages[0].0, "core");
        assert!((r.averages[0].1 - 0.375).abs() < 1e-12);
        assert_eq!(r.averages[1].0, "only_wk");
        assert!((r.averages[1].1 - 0.35).abs() < 1e-12);
        assert!(r.dropped.is_empty());
        assert!((r.metrics()["icl/metrics/eval_gauntlet/lu"] - 0.4).abs() < 1e-12);
    }

    #[test]
    fn sample_size_weighting_uses_counts_including_subcategories() {
        let mut g = cfg(TWO_CATS);
        g.weighting = Weighting::SampleSize;
        let results = [
            res("arc/3-shot", 0.625, 100),
            res("jeopardy/3-shot/history", 0.3, 30),
            res("jeopardy/3-shot/science", 0.1, 20),
            res("lambada/0-shot", 0.4, 10),
        ];
        let r = compute(&g, &results).unwrap();
        // jeopardy = mean of categories = 0.2 with weight 50; arc 0.5 with weight 100.
        let want = 0.5 * 100.0 / 150.0 + 0.2 * 50.0 / 150.0;
        assert!((r.categories[0].score.unwrap() - want).abs() < 1e-12);
        g.weighting = Weighting::LogSampleSize;
        let r = compute(&g, &results).unwrap();
        let (wa, wj) = (100f64.log2(), 50f64.log2());
        let want = (0.5 * wa + 0.2 * wj) / (wa + wj);
        assert!((r.categories[0].score.unwrap() - want).abs() < 1e-12);
    }

    #[test]
    fn category_with_a_missing_benchmark_is_dropped_and_reported() {
        let g = cfg(TWO_CATS);
        let r = compute(
            &g,
            &[
                res("arc/3-shot", 0.625, 100),
                res("lambada/0-shot", 0.4, 10),
            ],
        )
        .unwrap();
        assert_eq!(r.categories[0].score, None);
        assert_eq!(
            r.dropped,
            vec![("wk".to_string(), vec!["jeopardy/3-shot".to_string()])]
        );
        // core averages only the kept category; only_wk has none left and is 0.
        assert!((r.averages[0].1 - 0.4).abs() < 1e-12);
        assert_eq!(r.averages[1].1, 0.0);
        assert!(!r.metrics().contains_key("icl/metrics/eval_gauntlet/wk"));
    }

    #[test]
    fn wrong_shot_count_counts_as_missing() {
        let g = cfg(TWO_CATS);
        let r = compute(
            &g,
            &[
                res("arc/0-shot", 1.0, 1),
                res("jeopardy/3-shot", 0.0, 1),
                res("lambada/0-shot", 0.0, 1),
            ],
        )
        .unwrap();
        assert_eq!(r.dropped[0].1, vec!["arc/3-shot".to_string()]);
    }

    #[test]
    fn no_averages_means_default_average_and_no_results_means_none() {
        let g = cfg(
            "categories:\n- name: a\n  benchmarks:\n  - {name: x, num_fewshot: 0, random_baseline: 0.5}\n",
        );
        let r = compute(&g, &[res("x/0-shot", 0.75, 4)]).unwrap();
        assert_eq!(r.averages, vec![("default_average".to_string(), 0.5)]);
        assert!(compute(&g, &[]).is_none());
    }

    #[test]
    fn invalid_definitions_are_rejected_with_the_reason() {
        let p = Path::new("g.yaml");
        let bad = |y: &str| {
            GauntletConfig::from_value(&parse_yaml(y, p).unwrap(), p)
                .unwrap_err()
                .to_string()
        };
        let base = "categories:\n- name: a\n  benchmarks: []\n";
        assert!(
            bad(&format!(
                "{base}rescale_accuracy: true\nsubtract_random_baseline: false\n"
            ))
            .contains("rescale")
        );
        assert!(bad(&format!("{base}averages:\n  a: [a]\n")).contains("category's name"));
        assert!(bad(&format!("{base}weighting: MEDIAN\n")).contains("MEDIAN"));
        assert!(bad(&format!("{base}extra: 1\n")).contains("`extra`"));
    }

    #[test]
    #[ignore = "needs shared fixtures"]
    fn llm_foundry_gauntlet_files_parse() {
        for f in ["eval_gauntlet.yaml", "eval_gauntlet_v0.3.yaml"] {
            let g = GauntletConfig::from_file(&tessera_testkit::shared_fixture(format!(
                "icl/yamls/{f}"
            )))
            .unwrap_or_else(|e| panic!("{f}: {e}"));
            assert!(g.categories.len() >= 5, "{f}");
            assert!(
                g.named_averages().iter().any(|(n, _)| n == "core_average"),
                "{f}"
            );
        }
    }
}
