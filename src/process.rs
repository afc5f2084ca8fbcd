//! Child processes that must not outlive us: a rollout server, a reward verifier. Each starts
//! through `sh -c exec ...` in a process group of its own and gets SIGTERM if this process dies.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Starts `command` (a shell command line, `NAME=VALUE` assignments in front allowed) with the
/// given standard streams. The shell execs it, so the signals reach the command itself.
pub fn spawn(command: &str, stdin: Stdio, stdout: Stdio, stderr: Stdio) -> std::io::Result<Child> {
    let assignment = |word: &str| {
        word.split_once('=').is_some_and(|(name, _)| {
            name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
    };
    // `exec NAME=VALUE cmd` would look for a program named NAME=VALUE; env sets it instead.
    let exec = if command.split_whitespace().next().is_some_and(assignment) { "exec env" } else { "exec" };
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(format!("{exec} {command}")).stdin(stdin).stdout(stdout).stderr(stderr).process_group(0);
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    cmd.spawn()
}

/// SIGTERM to the child's process group, SIGKILL after `grace`; then reaps it.
pub fn stop(child: &mut Child, grace: Duration) {
    let group = -(child.id() as i32);
    // SAFETY: plain signal sends to a process group we created.
    unsafe { libc::kill(group, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe { libc::kill(group, libc::SIGKILL) };
    let _ = child.wait();
}
