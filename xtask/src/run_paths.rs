//! Where a `tessera train` command keeps its run folder and checkpoints, worked out from its
//! arguments and YAML without running it.
//!
//! The launchers read the run's `metrics.jsonl` (progress, steps lost), append to its
//! `incidents.jsonl`, and read the checkpoint folder's `latest` pointer. They follow the
//! trainer's rules (`train/src/run_dir.rs`): the run folder is `--run-dir`, else
//! `runs/<run_name>`; `run_name` is the YAML's, else `$RUN_NAME`, else the config file's stem;
//! checkpoints go to `save_folder` with `{run_name}` substituted, else `<run folder>/checkpoints`
//! (also for an object-store `save_folder`, which is staged there).
//!
//! xtask does not link the trainer, so it resolves only the interpolations a run name or save
//! folder uses in practice: `${variables.NAME}`, `${NAME}` and `${oc.env:NAME[,default]}`.
//! Anything else is an error that asks for `--run-dir` (and a literal `save_folder`).

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use serde_json::Value;

/// The run folder and the local checkpoint folder of one training command.
#[derive(Debug, Clone, PartialEq)]
pub struct RunPaths {
    /// `runs/<run_name>` or `--run-dir` (relative paths are relative to the ranks' working
    /// directory, which is the launcher's).
    pub run_dir: PathBuf,
    /// Where `latest` and `ba{N}/` are written.
    pub save_folder: PathBuf,
}

impl RunPaths {
    /// The run's `metrics.jsonl`.
    pub fn metrics(&self) -> PathBuf {
        self.run_dir.join("metrics.jsonl")
    }
    /// The run's `incidents.jsonl`.
    pub fn incidents(&self) -> PathBuf {
        self.run_dir.join("incidents.jsonl")
    }
    /// The checkpoint folder's `latest` pointer (`ba{N}`).
    pub fn latest(&self) -> PathBuf {
        self.save_folder.join("latest")
    }
}

/// The parts of a `tessera [global flags] train CONFIG [--set K=V]… [--run-dir D]` command line
/// that decide its paths. `None` when `args` is not a `train` command.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainArgs {
    pub config: PathBuf,
    pub overrides: Vec<(String, String)>,
    pub run_dir: Option<PathBuf>,
}

impl TrainArgs {
    /// Parses the arguments after the program name.
    pub fn parse(args: &[String]) -> anyhow::Result<Option<Self>> {
        // Global flags (`--device cuda`) may come before the subcommand.
        let mut i = 0;
        while i < args.len() && args[i].starts_with('-') {
            i += if args[i].contains('=') { 1 } else { 2 };
        }
        if args.get(i).map(String::as_str) != Some("train") {
            return Ok(None);
        }
        let mut config = None;
        let mut overrides = Vec::new();
        let mut run_dir = None;
        let mut rest = args[i + 1..].iter();
        while let Some(arg) = rest.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
                _ => (arg.as_str(), None),
            };
            let mut value = |name: &str| -> anyhow::Result<String> {
                inline
                    .clone()
                    .or_else(|| rest.next().cloned())
                    .ok_or_else(|| anyhow!("train {name} needs a value"))
            };
            match flag {
                "--set" => {
                    let kv = value("--set")?;
                    let (k, v) = kv
                        .split_once('=')
                        .ok_or_else(|| anyhow!("train --set {kv:?}: expected KEY=VALUE"))?;
                    overrides.push((k.to_string(), v.to_string()));
                }
                "--run-dir" => run_dir = Some(PathBuf::from(value("--run-dir")?)),
                "--gpu" | "--device" => {
                    value(flag)?;
                }
                f if f.starts_with('-') => {}
                _ if config.is_none() => config = Some(PathBuf::from(arg)),
                _ => {}
            }
        }
        let config = config.ok_or_else(|| anyhow!("`tessera train` needs a CONFIG file"))?;
        Ok(Some(Self {
            config,
            overrides,
            run_dir,
        }))
    }

    /// Reads the config and resolves the run folder and save folder, as the trainer will.
    pub fn paths(&self) -> anyhow::Result<RunPaths> {
        let text = std::fs::read_to_string(&self.config)
            .with_context(|| format!("reading {}", self.config.display()))?;
        let yaml: Value = serde_saphyr::from_str(&text)
            .with_context(|| format!("{}: not a YAML mapping", self.config.display()))?;
        let key = |name: &str| -> anyhow::Result<Option<String>> {
            if let Some((_, v)) = self.overrides.iter().rev().find(|(k, _)| k == name) {
                return Ok(Some(v.clone()));
            }
            match yaml.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => resolve(s, &yaml)
                    .map(Some)
                    .with_context(|| format!("{}: {name}", self.config.display())),
                Some(other) => bail!(
                    "{}: {name} is {other}, expected a string",
                    self.config.display()
                ),
            }
        };
        let run_name = match key("run_name")? {
            Some(name) => name,
            None => std::env::var("RUN_NAME").ok().unwrap_or_else(|| {
                self.config
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "tessera".into())
            }),
        };
        let run_dir = self
            .run_dir
            .clone()
            .unwrap_or_else(|| Path::new("runs").join(&run_name));
        let save_folder = match key("save_folder")? {
            Some(f) if !f.contains("://") => PathBuf::from(f.replace("{run_name}", &run_name)),
            _ => run_dir.join("checkpoints"),
        };
        Ok(RunPaths {
            run_dir,
            save_folder,
        })
    }
}

/// Resolves the `${…}` interpolations a path-like string uses.
fn resolve(s: &str, root: &Value) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find('}')
            .ok_or_else(|| anyhow!("unclosed `${{` in {s:?}"))?;
        let expr = &rest[start + 2..start + end];
        out.push_str(&lookup(expr, root).with_context(|| {
            format!("cannot resolve `${{{expr}}}` here: pass --run-dir (and a literal save_folder)")
        })?);
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn lookup(expr: &str, root: &Value) -> anyhow::Result<String> {
    if let Some(env) = expr.strip_prefix("oc.env:") {
        let (name, default) = match env.split_once(',') {
            Some((n, d)) => (n.trim(), Some(d.trim())),
            None => (env.trim(), None),
        };
        return std::env::var(name)
            .ok()
            .or_else(|| default.map(str::to_string))
            .ok_or_else(|| anyhow!("environment variable {name} is not set"));
    }
    let mut node = root;
    for part in expr.split('.') {
        node = node
            .get(part)
            .ok_or_else(|| anyhow!("no key {part:?} on the way to {expr}"))?;
    }
    match node {
        Value::String(s) if !s.contains("${") => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => bail!("{expr} is {other}, not a plain value"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    fn paths_for(yaml: &str, line: &str) -> RunPaths {
        let dir = std::env::temp_dir().join(format!("xtask-run-paths-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("pretrain.yaml");
        std::fs::write(&cfg, yaml).unwrap();
        let line = line.replace("CFG", &cfg.display().to_string());
        let paths = TrainArgs::parse(&args(&line)).unwrap().unwrap().paths();
        std::fs::remove_dir_all(&dir).unwrap();
        paths.unwrap()
    }

    #[test]
    fn run_dir_defaults_to_runs_run_name_with_checkpoints_inside() {
        let p = paths_for("run_name: mpt-7b\n", "--device cpu train CFG");
        assert_eq!(p.run_dir, PathBuf::from("runs/mpt-7b"));
        assert_eq!(p.save_folder, PathBuf::from("runs/mpt-7b/checkpoints"));
        assert_eq!(p.metrics(), PathBuf::from("runs/mpt-7b/metrics.jsonl"));
    }

    #[test]
    fn run_dir_flag_and_set_overrides_win() {
        let p = paths_for(
            "run_name: a\nsave_folder: ck/{run_name}\n",
            "train CFG --set run_name=b --run-dir=here",
        );
        assert_eq!(p.run_dir, PathBuf::from("here"));
        assert_eq!(p.save_folder, PathBuf::from("ck/b"));
    }

    #[test]
    fn variables_are_interpolated_and_remote_save_folders_stage_in_the_run_dir() {
        let p = paths_for(
            "variables:\n  run_name: big\nrun_name: ${variables.run_name}\nsave_folder: s3://bucket/{run_name}\n",
            "train CFG",
        );
        assert_eq!(p.run_dir, PathBuf::from("runs/big"));
        assert_eq!(p.save_folder, PathBuf::from("runs/big/checkpoints"));
    }

    #[test]
    fn a_missing_run_name_falls_back_to_the_config_stem() {
        // RUN_NAME is not set by the test harness.
        if std::env::var_os("RUN_NAME").is_none() {
            let p = paths_for("seed: 1\n", "train CFG");
            assert_eq!(p.run_dir, PathBuf::from("runs/pretrain"));
        }
    }

    #[test]
    fn an_unresolvable_interpolation_asks_for_run_dir() {
        let dir = std::env::temp_dir().join(format!("xtask-run-paths-e-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("c.yaml");
        std::fs::write(&cfg, "run_name: ${..odd}\n").unwrap();
        let e = TrainArgs::parse(&args(&format!("train {}", cfg.display())))
            .unwrap()
            .unwrap()
            .paths()
            .unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(format!("{e:#}").contains("--run-dir"), "{e:#}");
    }

    #[test]
    fn other_subcommands_are_not_train_commands() {
        assert_eq!(TrainArgs::parse(&args("data merge out")).unwrap(), None);
        assert!(TrainArgs::parse(&args("train")).is_err());
    }
}
