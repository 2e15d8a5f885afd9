//! Slurm's compressed list syntaxes: host lists (`node[01-03,7],gpu5`) and tasks per node
//! (`2(x3),1`), as `srun` writes them into `SLURM_*_NODELIST` and `SLURM_*_TASKS_PER_NODE`.
//!
//! Written from Slurm's documented syntax (`scontrol show hostnames`): a list is comma-separated
//! at the top level; each item may hold several bracket groups, each a comma-separated list of
//! numbers or `lo-hi` ranges whose zero padding is kept (`[08-10]` gives `08 09 10`). Several
//! groups expand as a cartesian product, leftmost slowest (`r[1-2]n[1-2]` gives
//! `r1n1 r1n2 r2n1 r2n2`).

/// The largest number of hosts one list may expand to; a typo like `n[1-999999999]` is an error,
/// not an allocation of gigabytes.
const MAX_HOSTS: usize = 1 << 20;

/// Expands a Slurm host list into host names, in order.
///
/// Errors (as a sentence naming the list) on unbalanced brackets, empty items, non-numeric or
/// reversed ranges, and lists that expand past a million hosts.
pub fn expand_hostlist(list: &str) -> Result<Vec<String>, String> {
    let list = list.trim();
    if list.is_empty() {
        return Err("host list is empty".into());
    }
    let mut hosts = Vec::new();
    for item in split_top_level(list)? {
        if item.is_empty() {
            return Err(format!("host list {list:?} has an empty item"));
        }
        expand_item(item, &mut hosts).map_err(|e| format!("host list {list:?}: {e}"))?;
    }
    Ok(hosts)
}

/// Splits at commas outside brackets.
fn split_top_level(list: &str) -> Result<Vec<&str>, String> {
    let mut items = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in list.char_indices() {
        match c {
            '[' if depth > 0 => return Err(format!("host list {list:?} nests brackets")),
            '[' => depth = 1,
            ']' if depth == 0 => return Err(format!("host list {list:?} has an unmatched `]`")),
            ']' => depth = 0,
            ',' if depth == 0 => {
                items.push(list[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!("host list {list:?} has an unclosed `[`"));
    }
    items.push(list[start..].trim());
    Ok(items)
}

/// Expands one item (`rack[1-2]-n[01-02]`) and appends its hosts.
fn expand_item(item: &str, hosts: &mut Vec<String>) -> Result<(), String> {
    // The item as literal text and bracket groups: prefixes[i] comes before groups[i].
    let mut prefixes = Vec::new();
    let mut groups = Vec::new();
    let mut rest = item;
    while let Some(open) = rest.find('[') {
        let close = rest[open..]
            .find(']')
            .map(|c| open + c)
            .ok_or_else(|| format!("item {item:?} has an unclosed `[`"))?;
        prefixes.push(&rest[..open]);
        groups.push(expand_group(&rest[open + 1..close])?);
        rest = &rest[close + 1..];
    }
    let suffix = rest;
    let total = groups.iter().map(Vec::len).product::<usize>();
    if hosts.len() + total > MAX_HOSTS {
        return Err(format!("item {item:?} expands past {MAX_HOSTS} hosts"));
    }
    // An odometer over the groups, the last group turning fastest.
    let mut index = vec![0usize; groups.len()];
    for _ in 0..total {
        let mut name = String::new();
        for (g, prefix) in prefixes.iter().enumerate() {
            name.push_str(prefix);
            name.push_str(&groups[g][index[g]]);
        }
        name.push_str(suffix);
        hosts.push(name);
        for g in (0..groups.len()).rev() {
            index[g] += 1;
            if index[g] < groups[g].len() {
                break;
            }
            index[g] = 0;
        }
    }
    Ok(())
}

/// Expands the inside of one bracket group (`01-03,7`) into its numbers as text.
fn expand_group(group: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for part in group.split(',') {
        let part = part.trim();
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let parse = |s: &str| -> Result<u64, String> {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!(
                    "`[{group}]` has {part:?}, expected a number or `lo-hi`"
                ));
            }
            s.parse::<u64>()
                .map_err(|_| format!("`[{group}]`: {s:?} is too large"))
        };
        let (start, end) = (parse(lo)?, parse(hi)?);
        if start > end {
            return Err(format!("`[{group}]` has the reversed range {part:?}"));
        }
        if end - start >= MAX_HOSTS as u64 {
            return Err(format!(
                "`[{group}]`: range {part:?} is longer than {MAX_HOSTS}"
            ));
        }
        // Slurm pads every number of a range to the width of its start (`08-10`: 08 09 10).
        let width = lo.len();
        out.extend((start..=end).map(|n| format!("{n:0width$}")));
    }
    Ok(out)
}

/// Expands Slurm's tasks-per-node syntax (`2(x3),1` → `[2, 2, 2, 1]`).
pub fn expand_tasks_per_node(spec: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for part in spec.trim().split(',') {
        let part = part.trim();
        let bad = || format!("tasks per node {spec:?}: {part:?} is not `N` or `N(xK)`");
        let (count, repeat) = match part.split_once('(') {
            Some((count, rest)) => {
                let times = rest
                    .strip_prefix('x')
                    .and_then(|r| r.strip_suffix(')'))
                    .ok_or_else(bad)?;
                (count, times.parse::<usize>().map_err(|_| bad())?)
            }
            None => (part, 1),
        };
        let count = count.parse::<usize>().map_err(|_| bad())?;
        if repeat == 0 || out.len() + repeat > MAX_HOSTS {
            return Err(bad());
        }
        out.extend(std::iter::repeat_n(count, repeat));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(list: &str) -> Vec<String> {
        expand_hostlist(list).unwrap()
    }

    #[test]
    fn plain_names_pass_through() {
        assert_eq!(hosts("gpu5"), ["gpu5"]);
        assert_eq!(hosts("a,b , c"), ["a", "b", "c"]);
    }

    #[test]
    fn ranges_keep_zero_padding_and_order() {
        assert_eq!(
            hosts("node[01-03,7],gpu5"),
            ["node01", "node02", "node03", "node7", "gpu5"]
        );
        assert_eq!(hosts("n[08-10]"), ["n08", "n09", "n10"]);
        assert_eq!(hosts("n[8-10]"), ["n8", "n9", "n10"]);
    }

    #[test]
    fn several_groups_expand_as_a_product_with_suffix() {
        assert_eq!(
            hosts("r[1-2]n[1-2].ib"),
            ["r1n1.ib", "r1n2.ib", "r2n1.ib", "r2n2.ib"]
        );
    }

    #[test]
    fn malformed_lists_are_errors_naming_the_list() {
        for bad in [
            "", "n[1-3", "n]1", "n[3-1]", "n[a-b]", "n[[1]]", "a,,b", "n[1-]", "n[]",
        ] {
            let err = expand_hostlist(bad).unwrap_err();
            assert!(
                bad.is_empty() || err.contains(bad),
                "{bad:?} gave {err:?}, which does not name the list"
            );
        }
        assert!(
            expand_hostlist("n[0-99999999999]")
                .unwrap_err()
                .contains("longer than")
        );
    }

    #[test]
    fn tasks_per_node_expands_repeats() {
        assert_eq!(expand_tasks_per_node("2(x3),1").unwrap(), [2, 2, 2, 1]);
        assert_eq!(expand_tasks_per_node("8").unwrap(), [8]);
        for bad in ["", "2(x0)", "2(3)", "x", "2(x3"] {
            assert!(expand_tasks_per_node(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
