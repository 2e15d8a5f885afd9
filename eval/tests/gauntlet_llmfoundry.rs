//! llm-foundry's own gauntlet definitions (`icl/yamls/eval_gauntlet*.yaml`) applied to
//! hand-made results whose scores are known in closed form.

use tessera_eval::gauntlet::{BenchmarkResult, GauntletConfig, Weighting, compute};

fn v03() -> GauntletConfig {
    GauntletConfig::from_file(&tessera_testkit::shared_fixture(
        "icl/yamls/eval_gauntlet_v0.3.yaml",
    ))
    .unwrap()
}

/// Every benchmark at accuracy `baseline + f * (1 - baseline)`, i.e. rescaled score `f`.
fn results_at(g: &GauntletConfig, f: f64) -> Vec<BenchmarkResult> {
    let mut out = Vec::new();
    for c in &g.categories {
        for b in &c.benchmarks {
            if out.iter().any(|r: &BenchmarkResult| r.label == b.key()) {
                continue;
            }
            out.push(BenchmarkResult {
                label: b.key(),
                accuracy: b.random_baseline + f * (1.0 - b.random_baseline),
                num_samples: 100,
            });
        }
    }
    out
}

#[test]
#[ignore = "needs shared fixtures"]
fn uniform_rescaled_scores_give_that_score_everywhere() {
    let g = v03();
    assert_eq!(g.weighting, Weighting::Equal);
    let r = compute(&g, &results_at(&g, 0.5)).unwrap();
    assert!(r.dropped.is_empty());
    for c in &r.categories {
        assert!(
            (c.score.unwrap() - 0.5).abs() < 1e-12,
            "{}: {:?}",
            c.name,
            c.score
        );
    }
    assert_eq!(r.averages.len(), 1);
    assert_eq!(r.averages[0].0, "core_average");
    assert!((r.averages[0].1 - 0.5).abs() < 1e-12);
}

#[test]
#[ignore = "needs shared fixtures"]
fn one_perfect_benchmark_moves_its_category_by_its_weight() {
    let mut g = v03();
    let mut results = results_at(&g, 0.5);
    // world_knowledge's first benchmark (jeopardy/3-shot) perfect: rescaled score 1.
    let wk = g
        .categories
        .iter()
        .find(|c| c.name == "world_knowledge")
        .unwrap()
        .clone();
    let key = wk.benchmarks[0].key();
    results
        .iter_mut()
        .find(|r| r.label == key)
        .unwrap()
        .accuracy = 1.0;
    let m = wk.benchmarks.len() as f64;
    let r = compute(&g, &results).unwrap();
    let got = r
        .categories
        .iter()
        .find(|c| c.name == "world_knowledge")
        .unwrap()
        .score
        .unwrap();
    assert!((got - (0.5 * (m - 1.0) + 1.0) / m).abs() < 1e-12, "{got}");
    let n_cats = g.categories.len() as f64;
    let core = r.averages[0].1;
    assert!(
        (core - (0.5 * (n_cats - 1.0) + got) / n_cats).abs() < 1e-12,
        "{core}"
    );

    // With SAMPLE_SZ weighting and that benchmark holding 3x the samples, its weight triples.
    g.weighting = Weighting::SampleSize;
    results
        .iter_mut()
        .find(|r| r.label == key)
        .unwrap()
        .num_samples = 300;
    let r = compute(&g, &results).unwrap();
    let got = r
        .categories
        .iter()
        .find(|c| c.name == "world_knowledge")
        .unwrap()
        .score
        .unwrap();
    assert!(
        (got - (0.5 * (m - 1.0) + 3.0) / (m + 2.0)).abs() < 1e-12,
        "{got}"
    );
}

#[test]
#[ignore = "needs shared fixtures"]
fn the_reference_runs_alone_drop_every_category_and_say_which_benchmarks_are_missing() {
    // Only the four task files shipped in icl/ (accuracies from reference_results.json).
    let g = v03();
    let results = vec![
        BenchmarkResult {
            label: "lambada_openai/0-shot".into(),
            accuracy: 0.0,
            num_samples: 200,
        },
        BenchmarkResult {
            label: "piqa/0-shot".into(),
            accuracy: 0.575,
            num_samples: 200,
        },
        BenchmarkResult {
            label: "winograd/3-shot".into(),
            accuracy: 0.485,
            num_samples: 200,
        },
        BenchmarkResult {
            label: "triviaqa_sm_sub/3-shot".into(),
            accuracy: 0.0,
            num_samples: 200,
        },
    ];
    let r = compute(&g, &results).unwrap();
    assert_eq!(r.dropped.len(), g.categories.len());
    let lu = r
        .dropped
        .iter()
        .find(|(c, _)| c == "language_understanding")
        .unwrap();
    assert_eq!(
        lu.1,
        vec![
            "hellaswag/0-shot".to_string(),
            "winogrande/5-shot".to_string()
        ]
    );
    assert_eq!(r.averages, vec![("core_average".to_string(), 0.0)]);
}

#[test]
#[ignore = "needs shared fixtures"]
fn the_v1_gauntlet_accepts_averages_over_commented_out_categories() {
    // eval_gauntlet.yaml's lite_average names `programming_lite`, which the file comments out.
    let g = GauntletConfig::from_file(&tessera_testkit::shared_fixture(
        "icl/yamls/eval_gauntlet.yaml",
    ))
    .unwrap();
    let r = compute(&g, &results_at(&g, 0.25)).unwrap();
    for (name, avg) in &r.averages {
        assert!((avg - 0.25).abs() < 1e-12, "{name}: {avg}");
    }
}
