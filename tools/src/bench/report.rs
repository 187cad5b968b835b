//! The rows of the table: one figure per row for loky, its in-process
//! reference, and the Python peers; their markdown and JSON forms.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::machine::Machine;
use crate::python::{Peers, PEER_COLUMNS};

/// The unit of a row's figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unit {
    /// Microseconds (less is better).
    Us,
    /// Milliseconds (less is better).
    Ms,
    /// Seconds (less is better).
    S,
    /// Items per second (more is better).
    ItemsPerS,
    /// 1e9 bytes per second (more is better).
    GBps,
}

impl Unit {
    /// The short name printed in the table and the JSON.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Unit::Us => "µs",
            Unit::Ms => "ms",
            Unit::S => "s",
            Unit::ItemsPerS => "items/s",
            Unit::GBps => "GB/s",
        }
    }

    /// Whether a larger figure is the better one.
    pub(crate) fn higher_is_better(self) -> bool {
        matches!(self, Unit::ItemsPerS | Unit::GBps)
    }
}

/// A reference figure measured in the same run (rayon, a thread, an
/// in-process loop).
#[derive(Debug, Clone)]
pub(crate) struct Reference {
    /// What was measured, e.g. "rayon par_iter, 2 threads".
    pub(crate) name: String,
    pub(crate) value: f64,
}

/// What a Python peer's cell holds.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cell {
    Value(f64),
    /// Measured, but there was nothing to measure (e.g. the future never
    /// fails); the text says what happened.
    Never(String),
    /// Not run: the peer is not installed, or it has no such workload.
    NotApplicable,
    /// Skipped by peers.py (time budget, missing numpy).
    Skipped(String),
    /// The run failed.
    Error(String),
}

/// The column of the Rust peer, procspawn, measured in this process when
/// loky-bench is built with its `procspawn` feature.
pub(crate) const RUST_PEER: &str = "procspawn";

/// Whether any row has a Rust peer cell (then the table shows its column).
pub(crate) fn has_rust_peer(rows: &[Row]) -> bool {
    rows.iter().any(|r| r.peers.contains_key(RUST_PEER))
}

/// One figure: a workload's metric for loky and its comparisons.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    /// "W1" ... "W6".
    pub(crate) workload: &'static str,
    /// A stable identifier within the workload (also peers.py's metric
    /// name where the peers measure the same thing).
    pub(crate) key: String,
    /// What is measured, in words.
    pub(crate) metric: String,
    pub(crate) unit: Unit,
    /// loky's figure.
    pub(crate) loky: f64,
    pub(crate) reference: Option<Reference>,
    /// How loky's figure was obtained (repetitions, best chunksize, ...).
    pub(crate) note: String,
    /// The peers' figures by column name: [`RUST_PEER`] (measured in this
    /// process) and the Python peers' columns (filled by
    /// [`crate::python::fill`]).
    pub(crate) peers: BTreeMap<&'static str, Cell>,
}

impl Row {
    pub(crate) fn new(
        workload: &'static str,
        key: impl Into<String>,
        metric: impl Into<String>,
        unit: Unit,
        loky: f64,
    ) -> Self {
        Row {
            workload,
            key: key.into(),
            metric: metric.into(),
            unit,
            loky,
            reference: None,
            note: String::new(),
            peers: BTreeMap::new(),
        }
    }

    pub(crate) fn reference(mut self, name: impl Into<String>, value: f64) -> Self {
        self.reference = Some(Reference {
            name: name.into(),
            value,
        });
        self
    }

    pub(crate) fn note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }

    /// loky's speed relative to the reference: above 1, loky is faster.
    pub(crate) fn speed_ratio(&self) -> Option<f64> {
        let r = self.reference.as_ref()?;
        let ratio = if self.unit.higher_is_better() {
            self.loky / r.value
        } else {
            r.value / self.loky
        };
        ratio.is_finite().then_some(ratio)
    }
}

/// Three significant figures, with k/M/G for large rates.
pub(crate) fn fmt_value(v: f64, unit: Unit) -> String {
    fn sig3(v: f64) -> String {
        let a = v.abs();
        if a == 0.0 {
            "0".into()
        } else if a >= 100.0 {
            format!("{v:.0}")
        } else if a >= 10.0 {
            format!("{v:.1}")
        } else if a >= 1.0 {
            format!("{v:.2}")
        } else if a >= 0.001 {
            format!("{v:.3}")
        } else {
            format!("{v:.2e}")
        }
    }
    if !v.is_finite() {
        return "n/a".into();
    }
    if unit == Unit::ItemsPerS {
        if v >= 1e9 {
            return format!("{} G", sig3(v / 1e9));
        }
        if v >= 1e6 {
            return format!("{} M", sig3(v / 1e6));
        }
        if v >= 1e3 {
            return format!("{} k", sig3(v / 1e3));
        }
    }
    sig3(v)
}

fn fmt_ratio(r: f64) -> String {
    if r >= 10.0 {
        format!("{r:.0}×")
    } else {
        format!("{r:.2}×")
    }
}

fn cell_text(cell: Option<&Cell>, unit: Unit) -> String {
    match cell {
        Some(Cell::Value(v)) => fmt_value(*v, unit),
        Some(Cell::Never(_)) => "never fails".into(),
        Some(Cell::Skipped(_)) => "skipped".into(),
        Some(Cell::Error(_)) => "error".into(),
        Some(Cell::NotApplicable) | None => "n/a".into(),
    }
}

fn escape(text: &str) -> String {
    text.replace('|', "\\|")
}

/// The markdown report: a header line, the table, then notes (loky's,
/// `rust_notes` on how procspawn was measured, the Python peers').
pub(crate) fn markdown(
    machine: &Machine,
    rows: &[Row],
    rust_notes: &[String],
    peers: Option<&Peers>,
) -> String {
    let mut out = String::new();
    out.push_str(&format!("{}\n\n", machine.summary(peers)));
    let rust_peer = has_rust_peer(rows);
    let mut header = vec!["workload", "metric", "loky", "reference (same run)"];
    if rust_peer {
        header.push(RUST_PEER);
    }
    if peers.is_some() {
        header.extend(PEER_COLUMNS.iter().map(|(_, column)| *column));
    }
    out.push_str(&format!("| {} |\n", header.join(" | ")));
    out.push_str(&format!("|{}\n", "---|".repeat(header.len())));
    for row in rows {
        let reference = match (&row.reference, row.speed_ratio()) {
            (Some(r), Some(ratio)) => format!(
                "{} ({}; loky {})",
                fmt_value(r.value, row.unit),
                r.name,
                fmt_ratio(ratio)
            ),
            (Some(r), None) => format!("{} ({})", fmt_value(r.value, row.unit), r.name),
            (None, _) => "—".into(),
        };
        let mut cells = vec![
            row.workload.to_owned(),
            format!("{} ({})", escape_md(&row.metric), row.unit.name()),
            format!("**{}**", fmt_value(row.loky, row.unit)),
            reference,
        ];
        if rust_peer {
            cells.push(cell_text(row.peers.get(RUST_PEER), row.unit));
        }
        if peers.is_some() {
            cells.extend(
                PEER_COLUMNS
                    .iter()
                    .map(|(_, column)| cell_text(row.peers.get(column), row.unit)),
            );
        }
        let cells: Vec<String> = cells.iter().map(|c| escape(c)).collect();
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    out.push_str(
        "\n`loky k×` in the reference column is loky's speed relative to the \
         reference (above 1: loky is faster). Medians over repetitions unless \
         the metric says otherwise.\n",
    );
    let notes: Vec<String> = rows
        .iter()
        .filter(|row| !row.note.is_empty())
        .map(|row| {
            format!(
                "* {} {}: {}",
                row.workload,
                escape_md(&row.metric),
                escape_md(&row.note)
            )
        })
        .collect();
    let peer_notes = peers.map(Peers::notes).unwrap_or_default();
    if !notes.is_empty() || !rust_notes.is_empty() || !peer_notes.is_empty() {
        out.push_str("\n<details><summary>How each figure was taken</summary>\n");
        if !notes.is_empty() {
            out.push_str("\nloky:\n\n");
            out.push_str(&notes.join("\n"));
            out.push('\n');
        }
        if !rust_notes.is_empty() {
            out.push_str("\nprocspawn:\n\n");
            for note in rust_notes {
                out.push_str(&format!("* {}\n", escape_md(note)));
            }
        }
        if !peer_notes.is_empty() {
            out.push_str("\nPython peers (from peers.py):\n\n");
            out.push_str(&peer_notes.join("\n"));
            out.push('\n');
        }
        out.push_str("\n</details>\n");
    }
    out
}

/// Keeps text from being read as markup (`Vec<f64>` as an HTML tag, the
/// `*` of `x*2` as emphasis).
pub(crate) fn escape_md(text: &str) -> String {
    text.replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('*', "\\*")
}

/// The line before the generated report in a README.
pub(crate) const BEGIN: &str = "<!-- loky-bench: begin (generated, do not edit by hand) -->";
/// The line after it.
pub(crate) const END: &str = "<!-- loky-bench: end -->";

/// `readme` with the text between [`BEGIN`] and [`END`] replaced by
/// `report`.
pub(crate) fn splice(readme: &str, report: &str) -> Result<String, String> {
    let start = readme
        .find(BEGIN)
        .ok_or_else(|| format!("no {BEGIN:?} line"))?
        + BEGIN.len();
    let end = readme[start..]
        .find(END)
        .ok_or_else(|| format!("no {END:?} line after {BEGIN:?}"))?
        + start;
    Ok(format!(
        "{}\n\n{}\n{}",
        &readme[..start],
        report.trim(),
        &readme[end..]
    ))
}

fn cell_json(cell: &Cell) -> Value {
    match cell {
        Cell::Value(v) => json!(v),
        Cell::Never(why) => json!({ "value": null, "note": why }),
        Cell::NotApplicable => Value::Null,
        Cell::Skipped(why) => json!({ "value": null, "skipped": why }),
        Cell::Error(why) => json!({ "value": null, "error": why }),
    }
}

/// The JSON document: machine, rows, the notes on procspawn, and
/// peers.py's own document.
pub(crate) fn json(
    machine: &Machine,
    rows: &[Row],
    rust_notes: &[String],
    peers: Option<&Peers>,
) -> Value {
    let rows: Vec<Value> = rows
        .iter()
        .map(|row| {
            let mut python = serde_json::Map::new();
            for (column, cell) in row.peers.iter().filter(|(c, _)| **c != RUST_PEER) {
                python.insert((*column).to_owned(), cell_json(cell));
            }
            json!({
                "workload": row.workload,
                "key": row.key,
                "metric": row.metric,
                "unit": row.unit.name(),
                "higher_is_better": row.unit.higher_is_better(),
                "loky": row.loky,
                "reference": row.reference.as_ref().map(|r| json!({ "name": r.name, "value": r.value })),
                "loky_speed_vs_reference": row.speed_ratio(),
                "procspawn": row.peers.get(RUST_PEER).map_or(Value::Null, cell_json),
                "python": if peers.is_some() { Value::Object(python) } else { Value::Null },
                "note": row.note,
            })
        })
        .collect();
    json!({
        "machine": machine.to_json(),
        "rows": rows,
        "procspawn_notes": rust_notes,
        "python": peers.map(|p| p.doc.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_have_three_significant_figures() {
        assert_eq!(fmt_value(1.4321, Unit::Us), "1.43");
        assert_eq!(fmt_value(19.04, Unit::Us), "19.0");
        assert_eq!(fmt_value(579.4, Unit::Us), "579");
        assert_eq!(fmt_value(0.0423, Unit::S), "0.042");
        assert_eq!(fmt_value(125.4e6, Unit::ItemsPerS), "125 M");
        assert_eq!(fmt_value(1.6e6, Unit::ItemsPerS), "1.60 M");
        assert_eq!(fmt_value(2.5e9, Unit::ItemsPerS), "2.50 G");
        assert_eq!(fmt_value(f64::NAN, Unit::Ms), "n/a");
    }

    #[test]
    fn splice_replaces_between_the_markers() {
        let readme = format!("# x\n\n{BEGIN}\nold\n{END}\n\nafter\n");
        let new = splice(&readme, "new table\n").unwrap();
        assert_eq!(
            new,
            format!("# x\n\n{BEGIN}\n\nnew table\n{END}\n\nafter\n")
        );
        assert_eq!(splice(&new, "new table").unwrap(), new);
        assert!(splice("# no markers", "t").is_err());
    }

    #[test]
    fn speed_ratio_follows_the_unit() {
        let time = Row::new("W1", "p50", "p50", Unit::Us, 2.0).reference("thread", 20.0);
        assert_eq!(time.speed_ratio(), Some(10.0));
        let rate = Row::new("W2", "r", "r", Unit::ItemsPerS, 1e8).reference("rayon", 4e8);
        assert_eq!(rate.speed_ratio(), Some(0.25));
        assert_eq!(Row::new("W5", "x", "x", Unit::Us, 1.0).speed_ratio(), None);
    }
}
