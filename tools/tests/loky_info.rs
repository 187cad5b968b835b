//! The `loky-info` binary's command line: help, bad arguments, and the
//! plans it prints for a given worker count.

use std::process::Command;

fn info() -> Command {
    Command::new(env!("CARGO_BIN_EXE_loky-info"))
}

#[test]
fn help_and_bad_arguments() {
    let out = info().arg("-h").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--workers N"));

    for (args, says) in [
        (&["--workers", "0"][..], "not a positive number"),
        (&["--workers", "many"][..], "not a positive number"),
        (&["--workers"][..], "missing argument"),
        (&["--frobnicate"][..], "--frobnicate"),
        (&["stray"][..], "stray"),
    ] {
        let out = info().args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "loky-info {args:?}: {stderr}");
        assert!(stderr.contains(says), "loky-info {args:?} said: {stderr}");
        assert!(
            stderr.contains("usage: loky-info"),
            "no usage after the error"
        );
    }
}

#[test]
fn json_plans_follow_the_worker_count() {
    for form in [
        &["--workers", "3", "--json"][..],
        &["--json", "--workers=3"][..],
        &["-n", "3", "--json"][..],
    ] {
        let out = info().args(form).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let text = doc.to_string();
        assert!(text.contains("\"workers\":3"), "loky-info {form:?}: {text}");
    }
}
