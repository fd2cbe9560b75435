//! The `ferry` command line: topic administration, produce from stdin, consume to stdout.
//!
//! Everything lives in `ferry_client::cli`; this file only maps its outcome to the process exit code.

use std::process::ExitCode;

fn main() -> ExitCode {
    ferry_client::cli::main()
}
