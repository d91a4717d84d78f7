//! Aligned text tables for human output: a header row and left-aligned
//! columns separated by two spaces, trailing spaces trimmed.

/// A table being filled.
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are blank, extra cells are kept.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as lines (no final newline).
    pub fn render(&self) -> String {
        let columns = self
            .rows
            .iter()
            .map(Vec::len)
            .chain([self.headers.len()])
            .max()
            .unwrap_or(0);
        let mut widths = vec![0usize; columns];
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        std::iter::once(&self.headers)
            .chain(&self.rows)
            .map(|row| render_row(row, &widths))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn render_row(row: &[String], widths: &[usize]) -> String {
    let mut line = String::new();
    for (cell, width) in row.iter().zip(widths) {
        line.push_str(&format!("{cell:<width$}  "));
    }
    line.trim_end().to_string()
}

/// `[1, 2, 3]` -> `1,2,3`; empty -> `-`.
pub fn list(items: &[u64]) -> String {
    if items.is_empty() {
        return "-".to_string();
    }
    items
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// `Some(x)` -> `x`; `None` -> `-`.
pub fn opt<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_string(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_aligned() {
        let mut table = Table::new(&["ID", "ADDR", "STATE"]);
        table.row(vec!["1".into(), "127.0.0.1:7001".into(), "up".into()]);
        table.row(vec!["12".into(), "h:1".into(), "unreachable".into()]);
        assert_eq!(
            table.render(),
            "ID  ADDR            STATE\n\
             1   127.0.0.1:7001  up\n\
             12  h:1             unreachable"
        );
        assert_eq!(list(&[1, 2]), "1,2");
        assert_eq!(list(&[]), "-");
        assert_eq!(opt(None::<u64>), "-");
    }
}
