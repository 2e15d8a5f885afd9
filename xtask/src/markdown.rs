//! Rewrites one marked section of a markdown file, so each benchmark suite owns its table in
//! BENCHMARKS.md and re-running one suite leaves the others untouched.

use std::path::Path;

use anyhow::Context;

/// Prints a suite's section and writes it into the workspace's `BENCHMARKS.md` (see
/// [`replace_section`]).
pub fn publish(name: &str, heading: &str, body: &str) -> anyhow::Result<()> {
    println!("{body}");
    replace_section(
        &crate::util::root().join("BENCHMARKS.md"),
        name,
        heading,
        body,
    )
}

/// Replaces the text between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` in `path` (the
/// markers are kept), or appends a new marked section with `heading` if there is none.
pub fn replace_section(path: &Path, name: &str, heading: &str, body: &str) -> anyhow::Result<()> {
    let open = format!("<!-- bench:{name} -->");
    let close = format!("<!-- /bench:{name} -->");
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let section = format!("{open}\n{}\n{close}", body.trim_end());
    let new = match (text.find(&open), text.find(&close)) {
        (Some(a), Some(b)) if a < b => {
            format!("{}{}{}", &text[..a], section, &text[b + close.len()..])
        }
        _ => format!("{}\n## {heading}\n\n{section}\n", text.trim_end()),
    };
    crate::util::write_atomic(path, new.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_only_its_own_section() {
        let dir = tempfile_dir();
        let p = dir.join("B.md");
        std::fs::write(
            &p,
            "# B\n\n## A\n\n<!-- bench:a -->\nold a\n<!-- /bench:a -->\n\nkeep\n",
        )
        .unwrap();
        replace_section(&p, "a", "A", "new a").unwrap();
        replace_section(&p, "b", "Bee", "new b").unwrap();
        let t = std::fs::read_to_string(&p).unwrap();
        assert!(
            t.contains("<!-- bench:a -->\nnew a\n<!-- /bench:a -->"),
            "{t}"
        );
        assert!(!t.contains("old a"));
        assert!(t.contains("keep"));
        assert!(
            t.contains("## Bee\n\n<!-- bench:b -->\nnew b\n<!-- /bench:b -->"),
            "{t}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("xtask-md-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
