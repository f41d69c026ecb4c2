//! The conmon CLI role: ringmon started with the C conmon's command line,
//! one monitor process per container or exec session (docs/architecture.md,
//! "conmon CLI mode").
//!
//! Phase 1: the command line is parsed and checked; running the container is
//! not built yet, so a valid command line ends with a clear error.

pub mod cli;

use std::ffi::OsString;

use cli::ConmonCommand;

/// What the role prints before it exits on a valid command line until the
/// monitor is built.
pub const NOT_IMPLEMENTED: &str = "ringmon: conmon mode: running containers is not implemented yet";

/// Runs the role on the whole argv (argv[0] included); returns the exit
/// status.
pub fn main(argv: &[OsString]) -> i32 {
    let args = argv.get(1..).unwrap_or_default();
    match cli::parse(args) {
        Ok(ConmonCommand::Version) => {
            print!(
                "{}",
                cli::version_text(env!("CARGO_PKG_VERSION"), crate::version::BUILD.commit)
            );
            0
        }
        Ok(ConmonCommand::Help) => {
            print!("{}", cli::help_text());
            0
        }
        Ok(ConmonCommand::Run(_config)) => {
            eprintln!("{NOT_IMPLEMENTED}");
            1
        }
        Err(e) => {
            eprintln!("ringmon: conmon mode: {e}");
            1
        }
    }
}
