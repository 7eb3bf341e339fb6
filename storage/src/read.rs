//! The read path's rules: merging sources and deciding which versions a
//! reader sees (snapshot, delete markers, TTL, time range, max versions).

use crate::cell::{Cell, CellKey, CellKind};
use crate::options::FamilyOptions;

/// What a read asks for.
#[derive(Debug, Clone)]
pub struct ReadOptions {
    /// Versions per column (capped by the family's max versions).
    pub max_versions: u32,
    /// Only versions with `min <= ts < max`.
    pub time_range: Option<(i64, i64)>,
    /// Only edits with a sequence number up to this one.
    pub snapshot: u64,
    /// Current time, for TTL.
    pub now_ms: i64,
}

impl Default for ReadOptions {
    fn default() -> Self {
        Self {
            max_versions: 1,
            time_range: None,
            snapshot: u64::MAX,
            now_ms: now_ms(),
        }
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Merges sources, each sorted by key, into one sorted list.
pub fn merge(mut sources: Vec<Vec<Cell>>) -> Vec<Cell> {
    sources.retain(|s| !s.is_empty());
    if sources.len() == 1 {
        return sources.pop().unwrap_or_default();
    }
    let mut all: Vec<Cell> = sources.into_iter().flatten().collect();
    all.sort_by(|a, b| a.key.cmp(&b.key));
    all
}

/// The puts a reader sees, from cells of one family sorted by key.
pub fn resolve(cells: Vec<Cell>, family: &FamilyOptions, read: &ReadOptions) -> Vec<Cell> {
    let max_versions = read.max_versions.min(family.max_versions).max(1);
    let ttl = family.ttl_ms.map(|t| i64::try_from(t).unwrap_or(i64::MAX));
    let mut keep = vec![false; cells.len()];
    let mut family_deletes: Vec<(i64, u64)> = Vec::new();
    let mut column_deletes: Vec<(i64, u64)> = Vec::new();
    let mut versions = 0u32;
    let mut prev: Option<&CellKey> = None;
    for (i, cell) in cells.iter().enumerate() {
        let k = &cell.key;
        if k.seq > read.snapshot {
            continue;
        }
        let same_row_family = prev.is_some_and(|p| p.row == k.row && p.family == k.family);
        let same_column = same_row_family && prev.is_some_and(|p| p.qualifier == k.qualifier);
        if !same_row_family {
            family_deletes.clear();
        }
        if !same_column {
            column_deletes.clear();
            versions = 0;
        }
        prev = Some(k);
        // Reading as of a time: deletes made after it have not happened yet.
        let future = read.time_range.is_some_and(|(_, max)| k.ts >= max);
        match k.kind {
            CellKind::DeleteFamily | CellKind::Delete if future => {}
            CellKind::DeleteFamily => family_deletes.push((k.ts, k.seq)),
            CellKind::Delete => column_deletes.push((k.ts, k.seq)),
            CellKind::Put => {
                let masked = family_deletes
                    .iter()
                    .chain(column_deletes.iter())
                    .any(|&(ts, seq)| ts >= k.ts && seq > k.seq);
                let expired = ttl.is_some_and(|ttl| read.now_ms.saturating_sub(k.ts) > ttl);
                let outside = read
                    .time_range
                    .is_some_and(|(min, max)| k.ts < min || k.ts >= max);
                if !masked && !expired && !outside && versions < max_versions {
                    versions += 1;
                    keep[i] = true;
                }
            }
        }
    }
    cells
        .into_iter()
        .zip(keep)
        .filter_map(|(c, k)| k.then_some(c))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cell::Mutation;

    fn cells(ms: Vec<(Mutation, u64)>) -> Vec<Cell> {
        let mut cells: Vec<Cell> = ms.into_iter().map(|(m, s)| m.into_cell(s)).collect();
        cells.sort_by(|a, b| a.key.cmp(&b.key));
        cells
    }

    fn values(v: &[Cell]) -> Vec<(i64, Vec<u8>)> {
        v.iter().map(|c| (c.key.ts, c.value.clone())).collect()
    }

    #[test]
    fn newest_versions_deletes_and_ttl() {
        let family = FamilyOptions {
            max_versions: 2,
            ..Default::default()
        };
        let c = cells(vec![
            (Mutation::put(b"r", "f", b"q", 1, b"v1"), 1),
            (Mutation::put(b"r", "f", b"q", 2, b"v2"), 2),
            (Mutation::put(b"r", "f", b"q", 3, b"v3"), 3),
        ]);
        let all = ReadOptions {
            max_versions: 10,
            ..Default::default()
        };
        assert_eq!(
            values(&resolve(c.clone(), &family, &all)),
            vec![(3, b"v3".to_vec()), (2, b"v2".to_vec())]
        );
        assert_eq!(
            values(&resolve(c.clone(), &family, &ReadOptions::default())),
            vec![(3, b"v3".to_vec())]
        );
        let old = ReadOptions {
            snapshot: 1,
            ..Default::default()
        };
        assert_eq!(
            values(&resolve(c.clone(), &family, &old)),
            vec![(1, b"v1".to_vec())]
        );
        let range = ReadOptions {
            time_range: Some((1, 3)),
            max_versions: 10,
            ..Default::default()
        };
        assert_eq!(
            values(&resolve(c.clone(), &family, &range)),
            vec![(2, b"v2".to_vec()), (1, b"v1".to_vec())]
        );

        // A delete at ts 2 masks versions at or before it, not later puts.
        let c = cells(vec![
            (Mutation::put(b"r", "f", b"q", 1, b"v1"), 1),
            (Mutation::put(b"r", "f", b"q", 3, b"v3"), 2),
            (Mutation::delete(b"r", "f", b"q", 2), 3),
            (Mutation::put(b"r", "f", b"q", 2, b"again"), 4),
        ]);
        assert_eq!(
            values(&resolve(c.clone(), &family, &all)),
            vec![(3, b"v3".to_vec()), (2, b"again".to_vec())]
        );

        // A family delete masks every column of the row.
        let c = cells(vec![
            (Mutation::put(b"r", "f", b"a", 5, b"x"), 1),
            (Mutation::put(b"r", "f", b"b", 5, b"y"), 2),
            (Mutation::put(b"s", "f", b"a", 5, b"z"), 3),
            (Mutation::delete_family(b"r", "f", 5), 4),
        ]);
        assert_eq!(
            values(&resolve(c.clone(), &family, &all)),
            vec![(5, b"z".to_vec())]
        );

        let ttl = FamilyOptions {
            ttl_ms: Some(10),
            ..Default::default()
        };
        let c = cells(vec![
            (Mutation::put(b"r", "f", b"q", 100, b"old"), 1),
            (Mutation::put(b"r", "f", b"q", 195, b"new"), 2),
        ]);
        let at = ReadOptions {
            now_ms: 200,
            max_versions: 3,
            ..Default::default()
        };
        assert_eq!(
            values(&resolve(c.clone(), &ttl, &at)),
            vec![(195, b"new".to_vec())]
        );
    }
}
