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

/// Milliseconds since the Unix epoch as `YYYY-MM-DD HH:MM:SS.mmm` (UTC).
pub fn utc_datetime(ms: u64) -> String {
    let (year, month, day) = civil_from_days(ms / 86_400_000);
    format!("{year:04}-{month:02}-{day:02} {}", utc_time(ms))
}

/// The time of day of `ms` as `HH:MM:SS.mmm` (UTC).
pub fn utc_time(ms: u64) -> String {
    let in_day = ms % 86_400_000;
    let (hours, minutes) = (in_day / 3_600_000, in_day / 60_000 % 60);
    let (seconds, millis) = (in_day / 1_000 % 60, in_day % 1_000);
    format!("{hours:02}:{minutes:02}:{seconds:02}.{millis:03}")
}

/// The civil date of a day count since 1970-01-01 (Howard Hinnant's
/// algorithm, proleptic Gregorian calendar).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc() {
        assert_eq!(utc_datetime(0), "1970-01-01 00:00:00.000");
        // 2024-02-29T23:59:59.999Z, a leap day.
        assert_eq!(utc_datetime(1_709_251_199_999), "2024-02-29 23:59:59.999");
        // 2025-03-01T00:00:00.007Z.
        assert_eq!(utc_datetime(1_740_787_200_007), "2025-03-01 00:00:00.007");
        assert_eq!(utc_time(1_740_787_200_007 + 3_723_000), "01:02:03.007");
    }

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
