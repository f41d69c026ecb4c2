//! Writes ringmon's man pages and shell completions, generated from the
//! clap definitions the binary parses with (`ringmon::cli::Cli`, whose
//! `ctl` subcommand is `ringmon::ctl::CtlArgs`), so they cannot drift from
//! the flags:
//!
//!   ringmon-gen-docs OUT_DIR
//!
//! writes `OUT_DIR/man/ringmon.1`, `OUT_DIR/man/ringmon-ctl.1` (and one page
//! per ctl command, `ringmon-ctl-ps.1`, ...), and
//! `OUT_DIR/completions/{ringmon.bash,_ringmon,ringmon.fish}`.
//! `tools/install.sh` installs them with the binary (README, "Installing").

use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;

fn write_man(cmd: &clap::Command, name: &str, dir: &Path) -> std::io::Result<()> {
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .title(name)
        .render(&mut page)?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, page)?;
    println!("{}", path.display());
    Ok(())
}

fn main() -> std::io::Result<()> {
    let Some(out) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: ringmon-gen-docs OUT_DIR");
        std::process::exit(2);
    };
    let mut cmd = ringmon::cli::Cli::command();
    cmd.build();
    let man = out.join("man");
    std::fs::create_dir_all(&man)?;
    write_man(&cmd, "ringmon", &man)?;
    if let Some(ctl) = cmd.find_subcommand("ctl") {
        write_man(ctl, "ringmon-ctl", &man)?;
        for sub in ctl.get_subcommands() {
            write_man(sub, &format!("ringmon-ctl-{}", sub.get_name()), &man)?;
        }
    }
    let completions = out.join("completions");
    std::fs::create_dir_all(&completions)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let path = clap_complete::generate_to(shell, &mut cmd, "ringmon", &completions)?;
        println!("{}", path.display());
    }
    Ok(())
}
