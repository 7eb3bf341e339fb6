//! Cells: the unit of storage, and their order.

use std::cmp::Ordering;

/// A cell is a put or a delete marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CellKind {
    /// A value.
    Put = 0,
    /// Masks this column's versions at or before its timestamp.
    Delete = 1,
    /// Masks every column of the family in this row at or before its
    /// timestamp. Its qualifier is empty.
    DeleteFamily = 2,
}

impl CellKind {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Put),
            1 => Some(Self::Delete),
            2 => Some(Self::DeleteFamily),
            _ => None,
        }
    }
}

/// The sort key of a cell: row ascending, family ascending, qualifier
/// ascending, timestamp descending, sequence number descending.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CellKey {
    pub row: Vec<u8>,
    pub family: String,
    pub qualifier: Vec<u8>,
    pub ts: i64,
    pub seq: u64,
    pub kind: CellKind,
}

impl Ord for CellKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.row
            .cmp(&other.row)
            .then_with(|| self.family.cmp(&other.family))
            .then_with(|| {
                cmp_versions(
                    (&self.qualifier, self.ts, self.seq, self.kind),
                    (&other.qualifier, other.ts, other.seq, other.kind),
                )
            })
    }
}

/// Cell order within one row and family, of `(qualifier, timestamp,
/// sequence number, kind)`: qualifier ascending, timestamp and sequence
/// number descending (newest first), then kind.
pub(crate) fn cmp_versions(
    a: (&[u8], i64, u64, CellKind),
    b: (&[u8], i64, u64, CellKind),
) -> Ordering {
    a.0.cmp(b.0)
        .then_with(|| b.1.cmp(&a.1))
        .then_with(|| b.2.cmp(&a.2))
        .then_with(|| (a.3 as u8).cmp(&(b.3 as u8)))
}

impl PartialOrd for CellKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A stored cell: key and value (empty for delete markers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    pub key: CellKey,
    pub value: Vec<u8>,
}

/// One change in a write batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mutation {
    pub row: Vec<u8>,
    pub family: String,
    pub qualifier: Vec<u8>,
    pub ts: i64,
    pub kind: CellKind,
    pub value: Vec<u8>,
}

impl Mutation {
    pub fn put(row: &[u8], family: &str, qualifier: &[u8], ts: i64, value: &[u8]) -> Self {
        Self {
            row: row.to_vec(),
            family: family.to_string(),
            qualifier: qualifier.to_vec(),
            ts,
            kind: CellKind::Put,
            value: value.to_vec(),
        }
    }

    pub fn delete(row: &[u8], family: &str, qualifier: &[u8], ts: i64) -> Self {
        Self {
            row: row.to_vec(),
            family: family.to_string(),
            qualifier: qualifier.to_vec(),
            ts,
            kind: CellKind::Delete,
            value: Vec::new(),
        }
    }

    pub fn delete_family(row: &[u8], family: &str, ts: i64) -> Self {
        Self {
            row: row.to_vec(),
            family: family.to_string(),
            qualifier: Vec::new(),
            ts,
            kind: CellKind::DeleteFamily,
            value: Vec::new(),
        }
    }

    #[cfg(test)]
    pub(crate) fn into_cell(self, seq: u64) -> Cell {
        Cell {
            key: CellKey {
                row: self.row,
                family: self.family,
                qualifier: self.qualifier,
                ts: self.ts,
                seq,
                kind: self.kind,
            },
            value: self.value,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(row: &str, q: &str, ts: i64, seq: u64) -> CellKey {
        CellKey {
            row: row.into(),
            family: "f".into(),
            qualifier: q.into(),
            ts,
            seq,
            kind: CellKind::Put,
        }
    }

    #[test]
    fn newest_version_sorts_first_within_a_column() {
        let mut keys = [
            key("b", "x", 1, 1),
            key("a", "y", 5, 2),
            key("a", "x", 1, 3),
            key("a", "x", 9, 4),
            key("a", "x", 9, 7),
        ];
        keys.sort();
        let order: Vec<(String, String, i64, u64)> = keys
            .iter()
            .map(|k| {
                (
                    String::from_utf8(k.row.clone()).unwrap(),
                    String::from_utf8(k.qualifier.clone()).unwrap(),
                    k.ts,
                    k.seq,
                )
            })
            .collect();
        assert_eq!(
            order,
            vec![
                ("a".into(), "x".into(), 9, 7),
                ("a".into(), "x".into(), 9, 4),
                ("a".into(), "x".into(), 1, 3),
                ("a".into(), "y".into(), 5, 2),
                ("b".into(), "x".into(), 1, 1),
            ]
        );
    }
}
