//! Splitting one CSV into per-partner files, as if each partner held its own records.
//!
//! `--split-by COLUMN` gives each partner whole groups of that column's values (non-IID: e.g.
//! the bank data split by job group), assigning the largest groups first to the partner with
//! the fewest rows so partners stay comparable in size. `--split iid` deals rows out at random.
//!
//! [`partition_csv_keyed`] also gives every row a user id for consent simulations: the
//! source's own user-id column if it has one, otherwise a new first column `user_id` holding a
//! stable id per source row (`u` and the row's position).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

/// How to split rows among partners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Split {
    /// Whole groups of one column's values per partner.
    ByColumn(String),
    /// Rows dealt out at random.
    Iid,
}

/// Writes `partners` CSV files into `dir` and returns their paths and row counts.
pub fn partition_csv(
    source: &Path,
    dir: &Path,
    partners: usize,
    split: &Split,
    seed: u64,
) -> anyhow::Result<Vec<(PathBuf, usize)>> {
    partition(source, dir, partners, split, seed, None)
}

/// Like [`partition_csv`], and every row of the partner files carries a user id in
/// `user_id_column` (added as the first column when the source lacks it).
pub fn partition_csv_keyed(
    source: &Path,
    dir: &Path,
    partners: usize,
    split: &Split,
    seed: u64,
    user_id_column: &str,
) -> anyhow::Result<Vec<(PathBuf, usize)>> {
    partition(source, dir, partners, split, seed, Some(user_id_column))
}

fn partition(
    source: &Path,
    dir: &Path,
    partners: usize,
    split: &Split,
    seed: u64,
    user_id_column: Option<&str>,
) -> anyhow::Result<Vec<(PathBuf, usize)>> {
    if partners == 0 {
        bail!("--partners must be at least 1");
    }
    let text =
        std::fs::read_to_string(source).with_context(|| format!("reading {}", source.display()))?;
    let mut lines = text.lines();
    let header = lines.next().context("the data file is empty")?;
    let rows: Vec<&str> = lines.filter(|l| !l.trim().is_empty()).collect();
    let mut assignment = vec![0usize; rows.len()];
    match split {
        Split::Iid => {
            let mut order: Vec<usize> = (0..rows.len()).collect();
            order.shuffle(&mut StdRng::seed_from_u64(seed));
            for (k, &r) in order.iter().enumerate() {
                assignment[r] = k % partners;
            }
        }
        Split::ByColumn(col) => {
            let at = header
                .split(',')
                .position(|h| h == col)
                .with_context(|| format!("--split-by: the data has no column `{col}`"))?;
            let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
            for (r, line) in rows.iter().enumerate() {
                groups
                    .entry(line.split(',').nth(at).unwrap_or(""))
                    .or_default()
                    .push(r);
            }
            if groups.len() < partners {
                bail!(
                    "--split-by {col}: {} distinct values cannot fill {partners} partners",
                    groups.len()
                );
            }
            let mut groups: Vec<(&str, Vec<usize>)> = groups.into_iter().collect();
            groups.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(b.0)));
            let mut sizes = vec![0usize; partners];
            for (_, members) in groups {
                let (target, _) = sizes
                    .iter()
                    .enumerate()
                    .min_by_key(|&(i, s)| (*s, i))
                    .unwrap_or((0, &0));
                sizes[target] += members.len();
                for r in members {
                    assignment[r] = target;
                }
            }
        }
    }
    let add_ids = user_id_column.filter(|col| !header.split(',').any(|h| h == *col));
    let mut files = Vec::with_capacity(partners);
    for p in 0..partners {
        let path = dir.join(format!("partner-{p}.csv"));
        let mut out = std::io::BufWriter::new(
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?,
        );
        match add_ids {
            Some(col) => writeln!(out, "{col},{header}")?,
            None => writeln!(out, "{header}")?,
        }
        let mut n = 0;
        for (r, line) in rows.iter().enumerate() {
            if assignment[r] == p {
                match add_ids {
                    Some(_) => writeln!(out, "u{r},{line}")?,
                    None => writeln!(out, "{line}")?,
                }
                n += 1;
            }
        }
        out.flush()?;
        files.push((path, n));
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_by_column_keeps_groups_whole_and_balances() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("d.csv");
        let mut text = String::from("g,x\n");
        for (g, n) in [("a", 50), ("b", 30), ("c", 20), ("d", 10)] {
            for i in 0..n {
                text.push_str(&format!("{g},{i}\n"));
            }
        }
        std::fs::write(&src, text).unwrap();
        let files = partition_csv(&src, dir.path(), 2, &Split::ByColumn("g".into()), 0).unwrap();
        let sizes: Vec<usize> = files.iter().map(|f| f.1).collect();
        assert_eq!(sizes.iter().sum::<usize>(), 110);
        // a(50) → p0, b(30) → p1, c(20) → p1, d(10) → p0
        assert_eq!(sizes, vec![60, 50]);
        let p0 = std::fs::read_to_string(&files[0].0).unwrap();
        assert!(
            p0.lines()
                .skip(1)
                .all(|l| l.starts_with("a,") || l.starts_with("d,"))
        );
        let keyed = partition_csv_keyed(
            &src,
            dir.path(),
            2,
            &Split::ByColumn("g".into()),
            0,
            "user_id",
        )
        .unwrap();
        let k0 = std::fs::read_to_string(&keyed[0].0).unwrap();
        assert!(k0.starts_with("user_id,g,x\nu0,a,0\n"), "{k0}");
        let iid = partition_csv(&src, dir.path(), 3, &Split::Iid, 1).unwrap();
        assert_eq!(
            iid.iter().map(|f| f.1).collect::<Vec<_>>(),
            vec![37, 37, 36]
        );
    }
}
