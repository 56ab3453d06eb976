//! The console: what a run says to a person, on stderr (the summary table of a sweep on
//! stdout). A closed terminal or pipe (`taper train ... 2>&1 | head -2`) must not stop a run,
//! which goes on writing its files: a line that cannot be written is dropped. The commands that
//! only print (generate, eval, ...) instead end quietly on a closed pipe, as Unix tools do
//! (`runtime::quiet_on_closed_pipe`).

use std::io::Write;

/// Writes `line` to stderr; a write that fails (a closed pipe) is dropped.
pub fn say(line: impl std::fmt::Display) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Writes `line` to stdout; a write that fails (a closed pipe) is dropped.
pub fn print(line: impl std::fmt::Display) {
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}
