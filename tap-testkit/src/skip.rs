//! A skipped test says so where the person running the tests sees it, and `cargo xtask
//! test` repeats every skip in its closing summary.
//!
//! The test harness captures what a passing test prints with `eprintln!`, so a skip
//! reported that way is silent. These functions write to the process's stderr directly
//! (not captured) and append the same line to `$DCTAP_SKIP_LOG` when it is set.

use std::io::Write as _;

/// The file `cargo xtask test` collects skips in.
pub const SKIP_LOG_ENV: &str = "DCTAP_SKIP_LOG";

/// Reports that `test` is skipped because of `why`.
pub fn skipped(test: &str, why: &str) {
    let line = format!("SKIPPED {test}: {why}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
    if let Some(path) = std::env::var_os(SKIP_LOG_ENV) {
        // One write of one line in append mode: lines of tests running in parallel (and in
        // other test binaries) do not interleave.
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = f.write_all(line.as_bytes());
        }
    }
}

/// Whether missing prerequisites must fail the test instead of skipping it: under `cargo
/// xtask test` (`DCTAP_REQUIRE_LIVE=1`), whose set-up installs every tool.
pub fn required() -> bool {
    std::env::var("DCTAP_REQUIRE_LIVE").as_deref() == Ok("1")
}

/// For a prerequisite the set-up installs (a tool, root): false after reporting the skip,
/// or a panic under `cargo xtask test`, where it must be there.
pub fn unless_missing(test: &str, missing: Option<String>) -> bool {
    match missing {
        None => true,
        Some(why) if required() => panic!("{test}: required under cargo xtask test but cannot run: {why}"),
        Some(why) => {
            skipped(test, &format!("{why} (cargo xtask setup installs it)"));
            false
        }
    }
}

/// The reason a test that reads `../shared` skips when it is not beside the workspace: its
/// public captures cannot be copied into the project.
pub fn no_shared(what: &str) -> String {
    format!("{what} not found (../shared is not beside the workspace; its public captures add cases, the project's own fixtures run without it)")
}
