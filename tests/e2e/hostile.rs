//! Hostile plugins (`plugins/hostile`): each attack on the host's memory,
//! log, threads or stack must end its job as a user error (exit 2, not
//! restarted) naming the limit it hit, with the host's peak memory
//! bounded. No timing is asserted; every run ends in seconds because the
//! limits end it.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

use super::{plugins, single_operator_job};

/// What a run of `weir` left: its exit code, stderr, stdout, and the peak
/// resident memory of the process.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    max_rss_bytes: u64,
}

/// Runs `weir run --quiet JOB` as `weir_with_env` does, but reaps the child
/// with `wait4`, whose resource usage gives that one process's peak RSS.
// `wait4` reaps the child, which `Child` cannot know.
#[allow(clippy::zombie_processes)]
fn run_measured(dir: &Path, job: &str) -> Run {
    let path = dir.join("job.toml");
    std::fs::write(&path, job).unwrap();
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("weir-plugin-cache");
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", "--quiet", path.to_str().unwrap()])
        .env("WEIR_CACHE_DIR", cache)
        .env("WEIR_LOG", "warn")
        .env("WEIR_REST_ADDRESS", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("weir runs");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            pipe.read_to_end(&mut bytes).expect("reading weir's output");
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped")));
    let pid = child.id() as libc::pid_t;
    let started = std::time::Instant::now();
    let (status, usage) = loop {
        let mut status = 0;
        // SAFETY: a zeroed rusage is a valid value to be overwritten.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `pid` is our child, not yet reaped (`Child` is never
        // waited on); the out-pointers are valid for the call.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        assert!(r >= 0, "wait4: {}", std::io::Error::last_os_error());
        if r == pid {
            break (status, usage);
        }
        if started.elapsed() > std::time::Duration::from_secs(300) {
            child.kill().expect("killing a hung weir");
            let _ = child.wait();
            panic!("`weir run` hung for 5 minutes");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    Run {
        code: if libc::WIFEXITED(status) {
            Some(libc::WEXITSTATUS(status))
        } else {
            None
        },
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
        // Linux reports kilobytes.
        max_rss_bytes: u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024,
    }
}

/// A job of one `hostile` operator in `mode` over `lines` input lines,
/// with `extra` in the operator's table and `top` at the top level.
fn hostile_job(dir: &Path, mode: &str, lines: usize, extra: &str, top: &str) -> String {
    let input: String = (0..lines).map(|i| format!("line {i}\n")).collect();
    let operator = format!("config = \"{mode}\"\n{extra}");
    let job = single_operator_job(
        dir,
        &input,
        "hostile",
        plugins::HOSTILE,
        &operator,
        "stdout",
    );
    // Top-level tables go last: keys after a table header belong to it.
    format!("{job}\n{top}")
}

/// Checks the run failed as a user error in operator `hostile`, naming
/// `needle`, without a restart, and with the host's peak RSS under 1 GiB.
fn assert_limit(run: &Run, needle: &str) {
    let err = &run.stderr;
    assert_eq!(run.code, Some(2), "user error exit code: {err}");
    assert!(err.contains("operator `hostile`"), "names the uid: {err}");
    assert!(err.contains(needle), "expected `{needle}` in: {err}");
    assert!(!err.contains("; restart "), "a limit is not retried: {err}");
    assert_rss_bounded(run);
}

fn assert_rss_bounded(run: &Run) {
    assert!(
        run.max_rss_bytes > 0 && run.max_rss_bytes < 1 << 30,
        "peak RSS {} MiB",
        run.max_rss_bytes >> 20
    );
}

#[test]
fn one_record_emitting_a_gigabyte_hits_the_emit_limit() {
    let dir = tempfile::tempdir().unwrap();
    let run = run_measured(
        dir.path(),
        &hostile_job(dir.path(), "emit-flood", 1, "", ""),
    );
    assert_limit(
        &run,
        "emitted more than 64 MiB in one call (`limits.emit_mb_per_call`)",
    );
    assert!(run.stdout.is_empty(), "nothing reached the sink");
}

#[test]
fn a_limit_hit_ends_a_checkpointed_job_without_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("chk");
    let job = format!(
        "{}\n[checkpoints]\ninterval = \"100ms\"\nstorage = \"{}\"\n",
        hostile_job(
            dir.path(),
            "emit-flood",
            1,
            "limits = { emit_mb_per_call = 8 }",
            ""
        ),
        storage.display()
    );
    let run = run_measured(dir.path(), &job);
    assert_limit(
        &run,
        "emitted more than 8 MiB in one call (`limits.emit_mb_per_call`)",
    );
}

#[test]
fn a_gigabyte_logged_in_one_call_fails_it_and_stays_out_of_the_host_log() {
    let dir = tempfile::tempdir().unwrap();
    let run = run_measured(dir.path(), &hostile_job(dir.path(), "log-flood", 1, "", ""));
    assert_limit(
        &run,
        "wrote more than 64 MiB of log output in one call (64 times its log budget of 1024 KiB per call, `limits.log_kb_per_call`)",
    );
    // At most the budget (1 MiB), in lines cut at 8 KiB, reached stderr.
    assert!(run.stderr.len() < 2 << 20, "{} bytes", run.stderr.len());
    assert!(run.stderr.contains("[line cut at 8 KiB]"));
}

#[test]
fn a_chatty_plugin_loses_lines_over_its_log_budget_but_runs() {
    let dir = tempfile::tempdir().unwrap();
    let run = run_measured(
        dir.path(),
        &hostile_job(dir.path(), "log-chatty", 1, "", ""),
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stderr.contains(
            // 2,000 lines of 1 KiB: 1,024 fit the 1 MiB budget.
            "dropped 976 log line(s) (999424 bytes) of `process` over the log budget of 1024 KiB per call (`limits.log_kb_per_call`)"
        ),
        "{}",
        run.stderr
    );
}

#[test]
fn a_gigabyte_on_stdout_without_a_newline_neither_hangs_nor_buffers() {
    let dir = tempfile::tempdir().unwrap();
    let run = run_measured(
        dir.path(),
        &hostile_job(dir.path(), "stdout-flood", 1, "", ""),
    );
    assert_limit(&run, "`limits.log_kb_per_call`");
    assert!(run.stderr.len() < 2 << 20, "{} bytes", run.stderr.len());
}

#[test]
fn keyed_state_growing_16_mib_per_record_hits_the_state_limit() {
    // Through `keyed-state.write` and through `write-packed` alike.
    for mode in ["state-flood", "packed-flood"] {
        let dir = tempfile::tempdir().unwrap();
        let job = hostile_job(dir.path(), mode, 100, "limits = { state_mb = 64 }", "");
        let run = run_measured(dir.path(), &job);
        assert_limit(
            &run,
            "MiB of keyed state, over its limit of 64 MiB (`limits.state_mb`)",
        );
    }
}

#[test]
fn a_malformed_packed_write_buffer_is_the_plugins_error_naming_the_byte() {
    let dir = tempfile::tempdir().unwrap();
    let run = run_measured(
        dir.path(),
        &hostile_job(dir.path(), "packed-garbage", 1, "", ""),
    );
    let err = &run.stderr;
    assert_eq!(run.code, Some(2), "user error exit code: {err}");
    assert!(err.contains("operator `hostile`"), "names the uid: {err}");
    assert!(
        err.contains("malformed packed state writes at byte 15: unknown op 0x7f"),
        "{err}"
    );
}

#[test]
fn the_job_memory_budget_counts_every_instance() {
    let dir = tempfile::tempdir().unwrap();
    // One instance holding 40 MiB fits a 100 MiB budget…
    let job = |parallelism: u32| {
        hostile_job(
            dir.path(),
            "hold:40",
            3,
            &format!("parallelism = {parallelism}"),
            "[limits]\njob_memory_mb = 100",
        )
    };
    let run = run_measured(dir.path(), &job(1));
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    // …three do not.
    let run = run_measured(dir.path(), &job(3));
    assert_limit(
        &run,
        "over the job's memory budget of 100 MiB (`limits.job_memory_mb`)",
    );
}

#[test]
fn a_sleeping_plugin_does_not_block_the_host() {
    let dir = tempfile::tempdir().unwrap();
    // An hour's sleep per record: the frozen clock's timers fire at once.
    let run = run_measured(dir.path(), &hostile_job(dir.path(), "sleep", 3, "", ""));
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.stdout, "line 0\nline 1\nline 2\n");
}

#[test]
fn a_call_past_its_wall_clock_bound_is_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    // The most fuel a job file allows (minutes of guest code): only the
    // wall-clock bound ends it in time.
    let job = hostile_job(
        dir.path(),
        "spin",
        1,
        "limits = { fuel_per_call = 1000000000000, call_timeout_ms = 300 }",
        "",
    );
    let run = run_measured(dir.path(), &job);
    assert_limit(
        &run,
        "ran longer than its wall-clock bound of 300 ms per call (`limits.call_timeout_ms`)",
    );
}

#[test]
fn unbounded_recursion_is_a_stack_overflow_naming_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let run = run_measured(dir.path(), &hostile_job(dir.path(), "recurse", 1, "", ""));
    assert_limit(&run, "stack overflow");
    assert!(run.stderr.contains("512 KiB"), "{}", run.stderr);
}

#[test]
fn snapshot_and_close_have_a_fuel_budget_of_their_own() {
    let dir = tempfile::tempdir().unwrap();
    // `close` spins 20 million iterations: far over the 20 million fuel
    // per call, well within the 50 times as much `snapshot` and `close` get.
    let job = hostile_job(
        dir.path(),
        "flush:20",
        2,
        "limits = { fuel_per_call = 20000000 }",
        "",
    );
    let run = run_measured(dir.path(), &job);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert_eq!(run.stdout.lines().count(), 2);

    // One that never ends is still stopped, naming its own budget.
    let job = hostile_job(
        dir.path(),
        "flush:forever",
        2,
        "limits = { fuel_per_call = 20000000, fuel_per_snapshot = 100000000 }",
        "",
    );
    let run = run_measured(dir.path(), &job);
    assert_limit(
        &run,
        "failed in `close`: exceeded its CPU budget of 100000000 fuel per call (`limits.fuel_per_snapshot`)",
    );
}
