//! Aligned text tables for people (`status`, `list`). Pure.

/// Left-aligned columns separated by two spaces, trailing blanks trimmed; one string per row.
pub fn lines(rows: &[Vec<String>]) -> Vec<String> {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|r| {
            r.iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn aligns_and_trims() {
        let rows = vec![
            vec!["A".to_string(), "LONGER".into(), "C".into()],
            vec!["wide cell".to_string(), "x".into(), "".into()],
        ];
        assert_eq!(
            super::lines(&rows),
            ["A          LONGER  C", "wide cell  x"]
        );
    }
}
