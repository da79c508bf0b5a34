//! Running the row binaries from the xtask: build them once in release mode, run each as a
//! child, and pass an interrupt on to whichever child is running.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use anyhow::{Context, Result, bail, ensure};
use harness::Report;

/// The child running now, if any, and whether an interrupt has come: one lock, so that no
/// child can be started between the interrupt and the exit (it would be left running).
static RUNNING: Mutex<Running> = Mutex::new(Running { child: None, stopping: false });

struct Running {
    child: Option<i32>,
    stopping: bool,
}

fn running() -> std::sync::MutexGuard<'static, Running> {
    RUNNING.lock().unwrap_or_else(|e| e.into_inner())
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask/ sits in the workspace").to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"))
}

/// On SIGINT or SIGTERM: pass the signal on to the running child (a row cleans up after
/// itself when it gets one), wait for it to end, and exit with 128 + the signal's number.
pub fn forward_interrupts() -> Result<()> {
    // A subreaper, like every row: whatever a killed row leaves orphaned comes back to us and
    // is reaped here, not handed to a PID 1 that may never reap it (prctl(2)).
    // Safety: prctl(2) with plain integer arguments; it changes only this process.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) };
    let mut signals = signal_hook::iterator::Signals::new([libc::SIGINT, libc::SIGTERM])
        .context("installing the SIGINT and SIGTERM handlers")?;
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            let child = {
                let mut r = running();
                r.stopping = true;
                r.child
            };
            if let Some(pid) = child {
                // Safety: kill(2) on our own child's pid; the main thread has not reaped it
                // yet, because it clears `child` only after the wait.
                unsafe { libc::kill(pid, sig) };
                // The child exits promptly once signalled; wait until it is reaped.
                while running().child == Some(pid) {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            }
            harness::cleanup::reap_orphans(std::time::Duration::from_secs(2));
            let name = if sig == libc::SIGINT { "interrupted (SIGINT)" } else { "terminated (SIGTERM)" };
            eprintln!("{name}: stopped the running row");
            std::process::exit(128 + sig);
        }
    });
    Ok(())
}

/// Starts a command as the running child, unless an interrupt has come: then this thread
/// waits for the interrupt handler to end the process.
fn start(cmd: &mut Command) -> Result<std::process::Child> {
    let mut r = running();
    while r.stopping {
        drop(r);
        std::thread::park();
        r = running();
    }
    let child = cmd.spawn().with_context(|| format!("starting {}", cmd.get_program().to_string_lossy()))?;
    r.child = Some(child.id() as i32);
    Ok(child)
}

fn finished(status: Option<std::process::ExitStatus>) {
    use std::os::unix::process::ExitStatusExt;
    let mut stopping = {
        let mut r = running();
        r.child = None;
        r.stopping
    };
    // A Ctrl-C in a terminal reaches the whole process group at once: the row may end from it
    // before our own handler thread has even run (on one CPU, easily). A row that ended by an
    // interrupt means one is on its way to us too: give the handler a moment to take over.
    let interrupted = status.is_some_and(|s| {
        matches!(s.code(), Some(130 | 143)) || matches!(s.signal(), Some(libc::SIGINT | libc::SIGTERM))
    });
    let until = std::time::Instant::now() + std::time::Duration::from_secs(1);
    while interrupted && !stopping && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(5));
        stopping = running().stopping;
    }
    if stopping {
        // The interrupt handler ends the process with the signal's exit code; this thread
        // must not go on to report the interrupted row as a failure and exit first.
        loop {
            std::thread::park();
        }
    }
    // No child of ours runs now: collect any orphan the row left (none, when it cleaned up).
    harness::cleanup::reap_orphans(std::time::Duration::ZERO);
}

/// Runs a command to its end with its output captured, known to the interrupt forwarder.
pub fn output(mut cmd: Command) -> Result<std::process::Output> {
    let child = start(cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()))?;
    let out = child.wait_with_output();
    finished(out.as_ref().ok().map(|o| o.status));
    Ok(out?)
}

/// Runs a command with the caller's choice of stdout and our stderr.
pub fn status(mut cmd: Command) -> Result<std::process::ExitStatus> {
    let mut child = start(cmd.stdin(Stdio::null()))?;
    let status = child.wait();
    finished(status.as_ref().ok().copied());
    Ok(status?)
}

/// Builds the rows' binaries once, with optimisations, and returns their paths.
///
/// `PVT_BUILD_PROFILE=dev` builds the dev profile instead (optimised too, see Cargo.toml): the
/// tests set it so that they reuse the binaries `cargo test` has built rather than build
/// everything a second time.
pub fn build_release(rows: &[String]) -> Result<Vec<PathBuf>> {
    let profile = std::env::var("PVT_BUILD_PROFILE").unwrap_or_else(|_| "release".to_string());
    let dir = if profile == "dev" { "debug" } else { profile.as_str() };
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root()).args(["build", "--profile", &profile, "--quiet"]);
    for r in rows {
        cmd.args(["--package", r, "--bin", r]);
    }
    // Cargo's own messages go to stderr; stdout stays for the report.
    cmd.stdout(Stdio::null());
    let status = status(cmd)?;
    ensure!(status.success(), "cargo build --profile {profile} failed ({status})");
    Ok(rows.iter().map(|r| target_dir().join(dir).join(r)).collect())
}

/// Told the id of each experiment as a row starts it (see [`report_of`]).
pub type OnExperiment = Box<dyn Fn(&str) + Send>;

/// Runs a row binary with `--json` and reads its report. With `progress`, the row is handed
/// the write end of a pipe in `PVT_PROGRESS_FD` and names each experiment as it starts (the
/// harness's progress hook); each name is passed to `progress` from a reader thread.
pub fn report_of(row: &str, mut cmd: Command, progress: Option<OnExperiment>) -> Result<Report> {
    let pipe = match progress {
        Some(show) => Some(progress_pipe(&mut cmd, show)?),
        None => None,
    };
    let out = output(cmd);
    // Our write end closes here, so the reader sees the end of the pipe once the row is gone.
    drop(pipe);
    let out = out?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Report = match serde_json::from_str(&stdout) {
        Ok(r) => r,
        Err(e) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            bail!("{row} ({}) printed no report ({e}): {}", out.status, stderr.trim())
        }
    };
    ensure!(report.row == row, "{row} reported as row {:?}", report.row);
    Ok(report)
}

/// A pipe whose write end the row inherits (named in `PVT_PROGRESS_FD`), and a detached
/// thread that passes each line read from it to `show`. Returns the write end, to be dropped
/// once the row has ended.
fn progress_pipe(cmd: &mut Command, show: OnExperiment) -> Result<std::os::fd::OwnedFd> {
    use std::io::BufRead;
    use std::os::fd::AsRawFd;
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("pipe2")?;
    // Only the write end crosses exec: the row binary gets it, the reader stays ours. No other
    // child starts meanwhile (one row at a time), so nothing else inherits it.
    nix::fcntl::fcntl(&write, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty())).context("fcntl F_SETFD")?;
    cmd.env("PVT_PROGRESS_FD", write.as_raw_fd().to_string());
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(std::fs::File::from(read)).lines() {
            match line {
                Ok(id) => show(&id),
                Err(_) => break,
            }
        }
    });
    Ok(write)
}
