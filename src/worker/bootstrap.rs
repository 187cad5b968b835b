//! Turning a re-executed binary into a worker *before `main` runs*.
//!
//! A function pointer in `.init_array` is called by the dynamic loader (or
//! the static start-up code) for every process running this binary, before
//! `main`. It returns at once unless the process was spawned as a worker
//! (the `LOKY_WORKER_SPEC` variable is set); a worker runs its loop there and
//! exits, so the program's own `main` (or the test harness) never runs in it.
//! That is why neither `main` nor a `#[test]` needs an init call.

use std::ffi::c_char;

use super::EXIT_BOOTSTRAP;
use crate::pool::ENV_WORKER;

/// The loader calls this with `argc, argv, envp` (glibc and musl both pass
/// them to `.init_array` entries).
type InitFn = extern "C" fn(i32, *const *const c_char, *const *const c_char);

#[used]
#[link_section = ".init_array"]
pub(crate) static ENTRY: InitFn = entry;

extern "C" fn entry(_argc: i32, _argv: *const *const c_char, _envp: *const *const c_char) {
    let Some(raw) = std::env::var_os(ENV_WORKER) else {
        return;
    };
    // Not inherited by anything the worker starts (nested pools set their own).
    std::env::remove_var(ENV_WORKER);
    let code =
        std::panic::catch_unwind(|| super::run(&raw.to_string_lossy())).unwrap_or(EXIT_BOOTSTRAP);
    // Flushes Rust's stdout, then exits; `main` never runs in a worker.
    std::process::exit(code);
}
