//! Merging sub-dataset indexes into one (streaming's `merge_index`, `base/util.py`).
//!
//! Each sub-folder of `out` holds a complete dataset (one `--slice i/N` run). The merged
//! `out/index.json` lists every sub-dataset's shards in the order given, with each basename
//! prefixed by its sub-folder's name (`part-0/shard.00000.mds`), and is written as streaming
//! writes it: `{"version": 2, "shards": [...]}`. Shard files are not moved or copied.

use std::path::{Component, Path, PathBuf};

use super::atomic::write_atomic;
use super::error::{MdsError, Result};
use super::index::{INDEX_BASENAME, Index};

/// Merges the indexes of `sub_dirs` (each a direct child of `out_dir`, given as a name or a
/// path) into `out_dir/index.json`, atomically. Returns the merged index.
///
/// Refused: a sub-folder that is not a direct child of `out_dir`, one without an `index.json`,
/// a repeated sub-folder, or a sub-index that is itself merged (streaming's reader resolves
/// only one folder level).
pub fn merge_index(out_dir: impl AsRef<Path>, sub_dirs: &[impl AsRef<Path>]) -> Result<Index> {
    let out = out_dir.as_ref();
    let merge_err = |path: &Path, reason: String| MdsError::Merge {
        out: out.to_path_buf(),
        path: path.to_path_buf(),
        reason,
    };
    let mut names: Vec<String> = Vec::new();
    let mut merged = Index::default();
    for sub in sub_dirs {
        let sub = sub.as_ref();
        let name = child_name(out, sub).ok_or_else(|| {
            merge_err(
                sub,
                format!("must be a direct sub-folder of {}", out.display()),
            )
        })?;
        if names.contains(&name) {
            return Err(merge_err(sub, "listed twice".into()));
        }
        let sub_path = out.join(&name);
        let index = Index::load(&sub_path)?;
        for (i, mut shard) in index.shards.into_iter().enumerate() {
            for file in std::iter::once(&mut shard.raw_data).chain(shard.zip_data.as_mut()) {
                if file.basename.contains('/') {
                    return Err(merge_err(
                        &sub_path.join(INDEX_BASENAME),
                        format!(
                            "shard {i} is already under a sub-folder (`{}`); merge the original partitions instead",
                            file.basename
                        ),
                    ));
                }
                file.basename = format!("{name}/{}", file.basename);
            }
            merged.shards.push(shard);
        }
        names.push(name);
    }
    write_atomic(
        out,
        INDEX_BASENAME,
        merged.to_merged_json_string().as_bytes(),
    )?;
    Ok(merged)
}

/// Merges every direct sub-folder of `out_dir` that holds an `index.json`, in name order
/// (streaming's `merge_index(out)` form).
pub fn merge_index_from_root(out_dir: impl AsRef<Path>) -> Result<Index> {
    let out = out_dir.as_ref();
    let mut subs: Vec<PathBuf> = std::fs::read_dir(out)
        .map_err(|e| MdsError::io(out, "listing", e))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_dir() && p.join(INDEX_BASENAME).is_file())
        .collect();
    subs.sort();
    if subs.is_empty() {
        return Err(MdsError::Merge {
            out: out.to_path_buf(),
            path: out.to_path_buf(),
            reason: "no sub-folder holds an index.json".into(),
        });
    }
    merge_index(out, &subs)
}

/// The single path component naming `sub` inside `out`, if `sub` is `out/<name>` or `<name>`.
fn child_name(out: &Path, sub: &Path) -> Option<String> {
    let rel = sub.strip_prefix(out).unwrap_or(sub);
    let mut parts = rel.components();
    match (parts.next(), parts.next()) {
        (Some(Component::Normal(n)), None) => n.to_str().map(str::to_string),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mds::reader::MdsDataset;
    use crate::mds::value::Value;
    use crate::mds::writer::{MdsWriter, WriterOptions};

    fn write_part(dir: &Path, from: i64, n: i64) {
        let opts = WriterOptions {
            size_limit: Some(200),
            ..Default::default()
        };
        let mut w = MdsWriter::create(dir, &[("x", "int"), ("s", "str")], opts).unwrap();
        for i in from..from + n {
            w.write(&[("x", Value::Int(i)), ("s", Value::Str(format!("v{i}")))])
                .unwrap();
        }
        w.finish().unwrap();
    }

    #[test]
    fn merged_index_reads_back_every_partition_in_order() {
        let root = tempfile::tempdir().unwrap();
        write_part(&root.path().join("part-1"), 100, 7);
        write_part(&root.path().join("part-0"), 0, 9);
        let index = merge_index_from_root(root.path()).unwrap();
        assert!(index.shards[0].raw_data.basename.starts_with("part-0/"));
        let text = std::fs::read_to_string(root.path().join(INDEX_BASENAME)).unwrap();
        assert!(
            text.starts_with("{\"version\": 2, \"shards\": [{\"column_encodings\""),
            "{text}"
        );
        let ds = MdsDataset::open(root.path()).unwrap();
        let xs: Vec<Value> = ds
            .iter()
            .map(|s| s.unwrap().get("x").unwrap().clone())
            .collect();
        let want: Vec<Value> = (0..9).chain(100..107).map(Value::Int).collect();
        assert_eq!(xs, want);
    }

    #[test]
    fn merge_refuses_non_children_repeats_and_nested_merges() {
        let root = tempfile::tempdir().unwrap();
        write_part(&root.path().join("a"), 0, 3);
        assert!(merge_index(root.path(), &["a", "a"]).is_err());
        assert!(merge_index(root.path(), &["a/b"]).is_err());
        assert!(merge_index(root.path(), &["missing"]).is_err());
        merge_index(root.path(), &[root.path().join("a")]).unwrap();
        // A merged dataset as a partition of another merge is refused.
        let outer = tempfile::tempdir().unwrap();
        std::fs::rename(root.path(), outer.path().join("m")).unwrap();
        assert!(merge_index(outer.path(), &["m"]).is_err());
    }
}
