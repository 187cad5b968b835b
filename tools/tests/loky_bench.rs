//! Smoke tests of the `loky-bench` binary: a quick run of the fast
//! workloads in JSON, and `--plot`.

use std::process::Command;

use serde_json::Value;

fn bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_loky-bench"))
}

fn run_json(args: &[&str]) -> Value {
    let out = bench().args(args).output().expect("run loky-bench");
    assert!(
        out.status.success(),
        "loky-bench {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("loky-bench --json prints one JSON document")
}

fn positive(v: &Value, what: &str) -> f64 {
    let x = v
        .as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"));
    assert!(x.is_finite() && x > 0.0, "{what} = {x}");
    x
}

#[test]
fn quick_json_has_every_figure() {
    let doc = run_json(&["--quick", "--json", "--only", "W1,W4,W5"]);

    let machine = &doc["machine"];
    positive(&machine["cpu_count"], "machine.cpu_count");
    positive(
        &machine["available_parallelism"],
        "machine.available_parallelism",
    );
    assert_eq!(machine["workers"], 2);
    assert_eq!(machine["quick"], true);
    assert_eq!(machine["loky_version"], env!("CARGO_PKG_VERSION"));
    let date = machine["date"].as_str().expect("machine.date");
    assert!(date.len() == 20 && date.ends_with('Z'), "date {date:?}");
    assert!(doc["python"].is_null(), "no --python: no peers");

    let rows = doc["rows"].as_array().expect("rows");
    let keys: Vec<(String, String)> = rows
        .iter()
        .map(|r| {
            (
                r["workload"].as_str().unwrap().to_owned(),
                r["key"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for (w, k) in [
        ("W1", "p50"),
        ("W1", "p99"),
        ("W4", "ms_create_first_result_shutdown"),
        ("W4", "ms_to_first_result"),
        ("W5", "us_get_and_one_task"),
        ("W5", "us_get_only"),
    ] {
        assert!(
            keys.contains(&(w.to_owned(), k.to_owned())),
            "no {w} {k} row in {keys:?}"
        );
    }
    assert!(keys
        .iter()
        .all(|(w, _)| ["W1", "W4", "W5"].contains(&w.as_str())));
    for r in rows {
        let what = format!("{} {}", r["workload"], r["key"]);
        positive(&r["loky"], &what);
        assert!(r["unit"].is_string() && r["metric"].is_string(), "{what}");
        if !r["reference"].is_null() {
            positive(&r["reference"]["value"], &format!("{what} reference"));
            positive(&r["loky_speed_vs_reference"], &format!("{what} ratio"));
        }
    }
    let p50 = rows.iter().find(|r| r["key"] == "p50").unwrap();
    let p99 = rows.iter().find(|r| r["key"] == "p99").unwrap();
    assert!(p50["loky"].as_f64() <= p99["loky"].as_f64());
    assert!(!p50["reference"].is_null(), "W1 has its thread reference");
}

/// procspawn, the Rust peer, measured in the same run: a figure for W1
/// and W4, none for W5 (it has no reusable executor), and a note on how.
#[cfg(feature = "procspawn")]
#[test]
fn procspawn_is_measured_beside_loky() {
    let doc = run_json(&["--quick", "--json", "--only", "W1,W4,W5"]);
    for r in doc["rows"].as_array().expect("rows") {
        let what = format!("procspawn {} {}", r["workload"], r["key"]);
        if r["workload"] == "W5" {
            assert!(r["procspawn"].is_null(), "{what}: {}", r["procspawn"]);
        } else {
            positive(&r["procspawn"], &what);
        }
    }
    let notes = doc["procspawn_notes"].as_array().expect("procspawn_notes");
    assert_eq!(notes.len(), 2, "one note each for W1 and W4: {notes:?}");
    assert!(notes[0].as_str().unwrap().starts_with("W1:"));

    let out = bench()
        .args(["--quick", "--only", "W1", "--no-procspawn"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("procspawn"),
        "--no-procspawn: no procspawn column"
    );
}

#[test]
fn plot_writes_an_svg() {
    let dir = std::env::temp_dir().join(format!("loky-bench-plot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let svg = dir.join("bench.svg");
    let out = bench()
        .args(["--quick", "--only", "W1", "--plot"])
        .arg(&svg)
        .output()
        .expect("run loky-bench");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("| W1 |"),
        "markdown table on stdout: {table}"
    );
    let text = std::fs::read_to_string(&svg).expect("the SVG was written");
    assert!(
        text.starts_with("<svg") || text.contains("<svg"),
        "not an SVG"
    );
    assert!(text.contains("W1") && text.contains("<rect"), "no bars");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_arguments_are_refused() {
    let out = bench().args(["--only", "W9"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown workload"));
    let out = bench().arg("--help").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--python PATH"));
}

#[test]
fn python_peers_side_by_side() {
    // Only where a python3 is on PATH; W5 is the fastest workload peers.py
    // runs (Python loky only).
    let Ok(probe) = Command::new("python3").arg("-c").arg("pass").output() else {
        eprintln!("no python3: skipped");
        return;
    };
    if !probe.status.success() {
        eprintln!("python3 does not run: skipped");
        return;
    }
    let doc = run_json(&["--quick", "--json", "--only", "W5", "--python", "python3"]);
    assert!(doc["python"]["results"].is_array(), "peers.py's document");
    let has_loky = Command::new("python3")
        .args(["-c", "import loky"])
        .output()
        .is_ok_and(|o| o.status.success());
    for row in doc["rows"].as_array().unwrap() {
        let peers = row["python"].as_object().expect("a python column per peer");
        assert!(peers.contains_key("concurrent.futures"), "{peers:?}");
        // W5 is Python loky's only: the others have no such figure.
        assert!(peers["concurrent.futures"].is_null());
        if has_loky {
            positive(&peers["loky (Python)"], "Python loky W5");
        }
    }
}
