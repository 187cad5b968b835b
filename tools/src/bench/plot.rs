//! `--plot FILE.svg`: the table as grouped bar charts, one panel per
//! workload (log scale: the peers are orders of magnitude apart).

use std::error::Error;
use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::machine::Machine;
use crate::python::PEER_COLUMNS;
use crate::report::{fmt_value, Cell, Row, Unit, RUST_PEER};

const WIDTH: u32 = 1400;
const PANEL_HEIGHT: u32 = 430;
const HEADER: u32 = 86;
const FONT: &str = "sans-serif";

/// Bar colours: loky, the reference, procspawn, then one per Python peer
/// column.
const COLOURS: [RGBColor; 8] = [
    RGBColor(0xd6, 0x4f, 0x1e),
    RGBColor(0x70, 0x70, 0x70),
    RGBColor(0x3b, 0x6e, 0xb5),
    RGBColor(0x5b, 0xa8, 0x4f),
    RGBColor(0x8e, 0x5e, 0xb0),
    RGBColor(0xe0, 0xa9, 0x2a),
    RGBColor(0x49, 0xb6, 0xc2),
    RGBColor(0x9c, 0x75, 0x5f),
];

/// A series' figure in a row, if it has one.
type Value = Box<dyn Fn(&Row) -> Option<f64>>;

/// One bar series: its legend name and its value in a row.
struct Series {
    name: String,
    colour: RGBColor,
    value: Value,
}

/// A peer column's figure in a row.
fn peer_value(column: &'static str) -> Value {
    Box::new(move |r: &Row| match r.peers.get(column) {
        Some(Cell::Value(v)) => Some(*v),
        _ => None,
    })
}

fn series(with_peers: bool) -> Vec<Series> {
    let mut out = vec![
        Series {
            name: "loky".into(),
            colour: COLOURS[0],
            value: Box::new(|r: &Row| Some(r.loky)),
        },
        Series {
            name: "reference (in-process / rayon, same run)".into(),
            colour: COLOURS[1],
            value: Box::new(|r: &Row| r.reference.as_ref().map(|x| x.value)),
        },
        Series {
            name: RUST_PEER.into(),
            colour: COLOURS[2],
            value: peer_value(RUST_PEER),
        },
    ];
    if with_peers {
        for (i, (peer, column)) in PEER_COLUMNS.iter().enumerate() {
            out.push(Series {
                name: format!("Python {peer}"),
                colour: COLOURS[(3 + i) % COLOURS.len()],
                value: peer_value(column),
            });
        }
    }
    out
}

/// A short label for a row under its group of bars.
fn short_label(row: &Row) -> String {
    let label = match row.key.as_str() {
        "p50" => "p50",
        "p99" => "p99",
        "GB_per_s" | "s_per_call" => "by value",
        "GB_per_s_in_place" | "s_per_call_in_place" => "by value, in place",
        "GB_per_s_zero_copy" | "s_per_call_zero_copy" => "by value, shared-memory allocator",
        "GB_per_s_shared" | "s_per_call_shared" => "SharedVec",
        "ms_create_first_result_shutdown" => "create + first result + drop",
        "ms_to_first_result" => "to first result",
        "us_get_and_one_task" => "get + one task",
        "us_get_only" => "get alone",
        "ms_to_failure" => "submit → failure",
        "ms_to_next_success" => "failure → next success",
        "ms_to_next_success_respawn" => "… pool of 1 (respawn)",
        key => return key.trim_start_matches("items_per_s_").replace('_', " "),
    };
    label.to_owned()
}

fn finite(v: Option<f64>) -> Option<f64> {
    v.filter(|v| v.is_finite() && *v > 0.0)
}

/// The rows one workload's panel shows: those in its rate unit if it has
/// one (W3: GB/s rather than s per call), else all of them.
fn panel_rows<'a>(rows: &'a [Row], workload: &str) -> Vec<&'a Row> {
    let of: Vec<&Row> = rows.iter().filter(|r| r.workload == workload).collect();
    let unit = of
        .iter()
        .find(|r| r.unit.higher_is_better())
        .or(of.first())
        .map(|r| r.unit);
    of.into_iter().filter(|r| Some(r.unit) == unit).collect()
}

fn title(workload: &str, unit: Unit) -> String {
    let what = match workload {
        "W1" => "submit x+1 + result, sequential",
        "W2" => "map(x*2) over u64",
        "W3" => "sum of an f64 array in a worker",
        "W4" => "cold pool",
        "W5" => "warm get_reusable_executor",
        "W6" => "a task SIGKILLs its worker",
        _ => "",
    };
    let better = if unit.higher_is_better() {
        "higher is better"
    } else {
        "lower is better"
    };
    format!("{workload}: {what} ({}, {better}, log scale)", unit.name())
}

/// Draws the chart into `path`.
pub(crate) fn draw(
    path: &Path,
    machine: &Machine,
    rows: &[Row],
    with_peers: bool,
) -> Result<(), Box<dyn Error>> {
    let mut workloads: Vec<&str> = Vec::new();
    for row in rows {
        if !workloads.contains(&row.workload) {
            workloads.push(row.workload);
        }
    }
    let all = series(with_peers);
    // Only the series that have a bar somewhere.
    let used: Vec<&Series> = all
        .iter()
        .filter(|s| rows.iter().any(|r| finite((s.value)(r)).is_some()))
        .collect();
    let cols = if workloads.len() > 1 { 2 } else { 1 };
    let panel_rows_n = workloads.len().div_ceil(cols).max(1);
    let height = HEADER + PANEL_HEIGHT * panel_rows_n as u32;
    let root = SVGBackend::new(path, (WIDTH, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let (header, body) = root.split_vertically(HEADER);

    // Header: title, machine, legend.
    let line = |size: u32| TextStyle::from((FONT, size).into_font()).color(&BLACK);
    header.draw(&Text::new(
        "loky-bench: the workloads W1–W6",
        (12, 8),
        line(20),
    ))?;
    header.draw(&Text::new(machine.summary(None), (12, 34), line(12)))?;
    let mut x = 12i32;
    for s in &used {
        header.draw(&Rectangle::new([(x, 60), (x + 14, 74)], s.colour.filled()))?;
        header.draw(&Text::new(s.name.clone(), (x + 19, 61), line(13)))?;
        x += 19 + 7 * s.name.chars().count() as i32 + 22;
    }

    let panels = body.split_evenly((panel_rows_n, cols));
    for (workload, area) in workloads.iter().zip(panels.iter()) {
        let rows = panel_rows(rows, workload);
        let Some(unit) = rows.first().map(|r| r.unit) else {
            continue;
        };
        // (group, series, value)
        let mut bars = Vec::new();
        for (g, row) in rows.iter().enumerate() {
            for s in &used {
                if let Some(v) = finite((s.value)(row)) {
                    bars.push((g, s, v));
                }
            }
        }
        let (lo, hi) = bars.iter().fold((f64::MAX, f64::MIN), |(lo, hi), b| {
            (lo.min(b.2), hi.max(b.2))
        });
        if bars.is_empty() {
            continue;
        }
        let (lo, hi) = (lo / 3.0, hi * 4.0);
        let groups = rows.len();
        let labels: Vec<String> = rows.iter().map(|r| short_label(r)).collect();
        let mut chart = ChartBuilder::on(area)
            .caption(title(workload, unit), (FONT, 15))
            .margin(12)
            .x_label_area_size(34)
            .y_label_area_size(64)
            .build_cartesian_2d(-0.5f64..groups as f64 - 0.5, (lo..hi).log_scale())?;
        let x_label = |x: &f64| {
            let g = x.round();
            if (x - g).abs() < 1e-6 && g >= 0.0 {
                labels.get(g as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        };
        let y_label = |y: &f64| fmt_value(*y, unit);
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(groups)
            .x_label_formatter(&x_label)
            .y_label_formatter(&y_label)
            .y_desc(unit.name())
            .label_style((FONT, 12))
            .draw()?;
        for g in 0..groups {
            let in_group: Vec<_> = bars.iter().filter(|b| b.0 == g).collect();
            let w = 0.84 / in_group.len().max(1) as f64;
            for (j, (_, s, v)) in in_group.iter().enumerate() {
                let x0 = g as f64 - 0.42 + j as f64 * w;
                let x1 = x0 + w * 0.88;
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(x0, lo), (x1, *v)],
                    s.colour.filled(),
                )))?;
                let style = TextStyle::from((FONT, 10).into_font())
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Center, VPos::Bottom));
                chart.draw_series(std::iter::once(Text::new(
                    fmt_value(*v, unit).replace(' ', ""),
                    ((x0 + x1) / 2.0, *v * 1.08),
                    style,
                )))?;
            }
        }
    }
    root.present()?;
    Ok(())
}
