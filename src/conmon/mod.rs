//! The conmon CLI role: ringmon started with the C conmon's command line,
//! one monitor process per container or exec session (docs/architecture.md,
//! "conmon CLI mode").
//!
//! `cli` parses the command line, `run` is the monitor process, `sync` and
//! `ctl` the messages of the pipes and the `ctl` fifo.

pub mod cli;
pub mod ctl;
mod run;
pub mod sync;

use std::ffi::OsString;

use cli::ConmonCommand;

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
        Ok(ConmonCommand::Run(config)) => run::run(*config),
        Err(e) => {
            eprintln!("ringmon: conmon mode: {e}");
            1
        }
    }
}
