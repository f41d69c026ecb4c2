//! The README's first command, `ringmon-demo`, works end to end: a real
//! server, a real container, an attach, an exec and the log.

mod common;

use std::process::Command;

use common::*;

#[test]
fn the_readme_demo_shows_logs_an_exec_and_an_attach() {
    let rt = &runtimes()[0];
    let output = Command::new(env!("CARGO_BIN_EXE_ringmon-demo"))
        .arg("--binary")
        .arg(binary())
        .arg("--runtime")
        .arg(rt)
        .output()
        .expect("run ringmon-demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "ringmon-demo failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for want in [
        "execSyncContainer: exit code 0, stdout \"hello from exec in ",
        "[stdout] attach said: hi from the attach client",
        "[stderr] to stderr",
        "stdout F attach said: hi from the attach client",
        "--- exit file: 7",
    ] {
        assert!(stdout.contains(want), "no {want:?} in:\n{stdout}");
    }
}
