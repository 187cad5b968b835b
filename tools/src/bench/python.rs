//! The Python peers: runs `tools/python/peers.py --json` with the given
//! interpreter and puts its figures in the rows' peer columns.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::report::{Cell, Row};

/// peers.py's peer names and the table's column for each, in table order.
pub(crate) const PEER_COLUMNS: &[(&str, &str)] = &[
    ("concurrent.futures", "concurrent.futures"),
    ("loky", "loky (Python)"),
    ("multiprocessing.Pool", "multiprocessing.Pool"),
    ("joblib", "joblib"),
    (IN_PROCESS, "numpy (in-process)"),
];

/// peers.py's name for the numpy sum in the calling interpreter (W3 only).
const IN_PROCESS: &str = "numpy (in-process)";

/// Where peers.py lives: beside this crate's sources, or, for a binary
/// whose sources moved, under `tools/` of the current directory.
pub(crate) fn script() -> Result<PathBuf, String> {
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/peers.py");
    let here = Path::new("tools/python/peers.py");
    if built.is_file() {
        return Ok(built);
    }
    if here.is_file() {
        return Ok(here.to_path_buf());
    }
    Err(format!(
        "peers.py is neither at {} nor at {} (run from the repository's root)",
        built.display(),
        here.display()
    ))
}

/// peers.py's JSON document.
#[derive(Debug, Clone)]
pub(crate) struct Peers {
    pub(crate) doc: Value,
}

/// Runs peers.py with `python` on `workloads`; its progress lines go to
/// our stderr.
pub(crate) fn run(python: &Path, quick: bool, workloads: &[&str]) -> Result<Peers, String> {
    let script = script()?;
    let mut cmd = Command::new(python);
    cmd.arg(&script)
        .arg("--json")
        .arg("--only")
        .arg(workloads.join(","));
    if quick {
        cmd.arg("--quick");
    }
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} {} exited with {}",
            python.display(),
            script.display(),
            out.status
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    parse(&text)
}

/// Reads peers.py's `--json` output (one document, possibly after other
/// lines).
pub(crate) fn parse(text: &str) -> Result<Peers, String> {
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .ok_or("peers.py printed no JSON document")?;
    let doc: Value =
        serde_json::from_str(line).map_err(|e| format!("peers.py's JSON is unreadable: {e}"))?;
    if !doc["results"].is_array() {
        return Err("peers.py's JSON has no \"results\" list".into());
    }
    Ok(Peers { doc })
}

impl Peers {
    fn records(&self) -> impl Iterator<Item = &Value> {
        self.doc["results"].as_array().into_iter().flatten()
    }

    /// "Python 3.11.7 (loky 3.7.0, joblib 1.6.0, numpy 2.4.6; start method fork)".
    pub(crate) fn summary(&self) -> String {
        let versions: Vec<String> = self.doc["versions"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| k.as_str() != "cloudpickle")
                    .map(|(k, v)| format!("{k} {}", v.as_str().unwrap_or("?")))
                    .collect()
            })
            .unwrap_or_default();
        let mut inner = versions.join(", ");
        if let Some(sm) = self.doc["start_method"].as_str() {
            if !inner.is_empty() {
                inner.push_str("; ");
            }
            inner.push_str(&format!("start method {sm}"));
        }
        format!(
            "Python {} ({inner})",
            self.doc["python"].as_str().unwrap_or("?")
        )
    }

    /// The record peers.py wrote for `peer`'s `workload` `metric`.
    fn record(&self, peer: &str, workload: &str, metric: &str) -> Option<&Value> {
        self.records()
            .find(|r| r["peer"] == peer && r["workload"] == workload && r["metric"] == metric)
    }

    /// A record without a metric: the peer or the workload was skipped or
    /// failed as a whole.
    fn whole(&self, peer: &str, workload: Option<&str>) -> Option<&Value> {
        self.records().find(|r| {
            r["peer"] == peer
                && r["metric"].is_null()
                && match workload {
                    Some(w) => r["workload"] == w,
                    None => r["workload"].is_null(),
                }
        })
    }

    fn cell(&self, row: &Row, peer: &str) -> Cell {
        if self.whole(peer, None).is_some() {
            // Not installed in this interpreter.
            return Cell::NotApplicable;
        }
        let Some(metric) = peer_metric(row.workload, &row.key, peer) else {
            return Cell::NotApplicable;
        };
        let found = self
            .record(peer, row.workload, &metric)
            .or_else(|| self.whole(peer, Some(row.workload)));
        let Some(r) = found else {
            return Cell::NotApplicable;
        };
        let text = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
        if let Some(v) = r["value"].as_f64() {
            Cell::Value(v)
        } else if r.get("error").is_some() {
            Cell::Error(text("error"))
        } else if r.get("skipped").is_some() {
            Cell::Skipped(text("skipped"))
        } else {
            Cell::Never(text("note"))
        }
    }

    /// One markdown bullet per distinct (peer, workload, note).
    pub(crate) fn notes(&self) -> Vec<String> {
        let mut seen = Vec::new();
        let mut out = Vec::new();
        for r in self.records() {
            let peer = r["peer"].as_str().unwrap_or("?");
            let workload = r["workload"].as_str().unwrap_or("all");
            let note = r["note"].as_str().unwrap_or_default();
            if note.is_empty() {
                continue;
            }
            let key = (peer.to_owned(), workload.to_owned(), note.to_owned());
            if seen.contains(&key) {
                continue;
            }
            seen.push(key);
            let column = PEER_COLUMNS
                .iter()
                .find(|(p, _)| *p == peer)
                .map_or(peer, |(_, c)| *c);
            let metric = r["metric"]
                .as_str()
                .map(|m| format!(" {m}"))
                .unwrap_or_default();
            out.push(format!(
                "* {column} {workload}{metric}: {}",
                crate::report::escape_md(note)
            ));
        }
        out
    }
}

/// peers.py's metric for one of our rows, or `None` when the peer has no
/// counterpart.
///
/// The W3 rows come in two flavours: by value (pickled through the pool),
/// which every pool peer measures (joblib with its memmapping turned off:
/// `*_by_value`), and in shared memory (`*_shared`), whose counterpart is
/// joblib's auto-memmapping. numpy's in-process sum is the Python ceiling
/// for both. Our by-value rows read in place (`*_in_place`) compare with
/// the same by-value figures: the Python peers have no other way to send
/// an array by value.
pub(crate) fn peer_metric(workload: &str, key: &str, peer: &str) -> Option<String> {
    if workload == "W3" {
        let key = key.strip_suffix("_in_place").unwrap_or(key);
        if let Some(base) = key.strip_suffix("_shared") {
            return matches!(peer, "joblib" | IN_PROCESS).then(|| base.to_owned());
        }
        if peer == "joblib" {
            return Some(format!("{key}_by_value"));
        }
        return Some(key.to_owned());
    }
    if key.ends_with("_shared") {
        return None;
    }
    Some(key.to_owned())
}

/// Fills every row's peer columns from peers.py's document.
pub(crate) fn fill(rows: &mut [Row], peers: &Peers) {
    for row in rows.iter_mut() {
        for (peer, column) in PEER_COLUMNS {
            let cell = peers.cell(row, peer);
            row.peers.insert(column, cell);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Unit;

    const DOC: &str = r#"progress
{"python": "3.11.7", "cores": 2, "date": "x", "platform": "p", "quick": true,
 "start_method": "fork", "versions": {"loky": "3.7.0", "numpy": "2.4.6"},
 "results": [
  {"peer": "joblib", "workload": null, "metric": null, "value": null, "unit": null, "note": "not installed", "skipped": "not installed"},
  {"peer": "loky", "workload": "W1", "metric": "p50", "value": 500.5, "unit": "us", "note": "n"},
  {"peer": "concurrent.futures", "workload": "W3", "metric": null, "value": null, "unit": null, "note": "boom", "error": "boom"},
  {"peer": "multiprocessing.Pool", "workload": "W6", "metric": "ms_to_failure", "value": null, "unit": "ms", "note": "the future never fails"},
  {"peer": "numpy (in-process)", "workload": "W3", "metric": "GB_per_s", "value": 9.5, "unit": "GB/s", "note": ""}
 ]}
"#;

    #[test]
    fn cells_from_records() {
        let peers = parse(&DOC.replace("\n ", " ").replace(",\n", ",")).unwrap();
        let mut rows = vec![
            Row::new("W1", "p50", "p50", Unit::Us, 1.0),
            Row::new("W3", "GB_per_s", "by value", Unit::GBps, 1.0),
            Row::new("W3", "GB_per_s_shared", "shared", Unit::GBps, 1.0),
            Row::new("W6", "ms_to_failure", "to error", Unit::Ms, 1.0),
        ];
        fill(&mut rows, &peers);
        let get = |i: usize, c: &str| rows[i].peers[c].clone();
        assert_eq!(get(0, "loky (Python)"), Cell::Value(500.5));
        assert_eq!(get(0, "concurrent.futures"), Cell::NotApplicable);
        assert_eq!(get(0, "joblib"), Cell::NotApplicable);
        assert_eq!(get(1, "concurrent.futures"), Cell::Error("boom".into()));
        assert_eq!(get(1, "numpy (in-process)"), Cell::Value(9.5));
        assert_eq!(get(2, "numpy (in-process)"), Cell::Value(9.5));
        assert_eq!(get(2, "concurrent.futures"), Cell::NotApplicable);
        assert!(matches!(get(3, "multiprocessing.Pool"), Cell::Never(_)));
        assert!(peers.summary().starts_with("Python 3.11.7 (loky 3.7.0"));
    }

    #[test]
    fn w3_metric_mapping() {
        assert_eq!(
            peer_metric("W3", "s_per_call", "loky").unwrap(),
            "s_per_call"
        );
        assert_eq!(
            peer_metric("W3", "s_per_call", "joblib").unwrap(),
            "s_per_call_by_value"
        );
        assert_eq!(
            peer_metric("W3", "s_per_call_shared", "joblib").unwrap(),
            "s_per_call"
        );
        assert_eq!(peer_metric("W3", "s_per_call_shared", "loky"), None);
        assert_eq!(
            peer_metric("W3", "GB_per_s_in_place", "joblib").unwrap(),
            "GB_per_s_by_value"
        );
        assert_eq!(peer_metric("W2", "items_per_s_10M_shared", "joblib"), None);
    }
}
