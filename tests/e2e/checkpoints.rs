//! Checkpoints end to end: `kill -9` at random moments and resume with
//! `--from-latest`, restoring with `-s`, refusing to start over existing
//! checkpoints, listing them, and clear errors for damaged ones.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

/// The word-count job with checkpoints every `interval` into `storage`.
fn checkpointed_job(input: &Path, out: &Path, storage: &Path, extra: &str) -> String {
    format!(
        r#"{job}
[checkpoints]
interval = "100ms"
storage = "{storage}"
{extra}
"#,
        job = wordcount_job(input, out, 2),
        storage = storage.display(),
    )
}

pub(super) fn spawn_weir(args: &[&str], log: &Path) -> Child {
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("weir-plugin-cache");
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .env("WEIR_CACHE_DIR", cache)
        .env("WEIR_LOG", "info")
        .env("WEIR_REST_ADDRESS", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("weir starts")
}

/// Waits up to `limit` for `child`; `Some(success)` if it exited.
pub(super) fn wait_for(child: &mut Child, limit: Duration) -> Option<bool> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status.success());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// Random numbers for a kill schedule: xorshift, seeded per run; the seed
/// is printed to replay a failure.
fn kill_schedule() -> impl FnMut() -> u64 {
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("kill schedule seed: {seed}");
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}

/// The newest completed checkpoint in `job_dir` (a job's directory of its
/// checkpoint storage), 0 if none.
pub(super) fn newest_in(job_dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(job_dir) else {
        return 0;
    };
    entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("_metadata").is_file())
        .filter_map(|p| p.file_name()?.to_str()?.strip_prefix("chk-")?.parse().ok())
        .max()
        .unwrap_or(0)
}

/// Runs `weir run --quiet JOB --from-latest` in `dir` life after life:
/// each of the first `kills` lives makes progress (a checkpoint in
/// `job_dir` completes) and is `kill -9`ed up to `max_delay` later; the
/// last runs to its end, which must be a success. The kill schedule's
/// seed is printed to replay a failure.
pub(super) fn run_through_kills(
    dir: &Path,
    job: &str,
    job_dir: &Path,
    kills: u32,
    max_delay: Duration,
) {
    let mut next = kill_schedule();
    let mut killed = 0;
    loop {
        let log = dir.join(format!("run-{killed}.log"));
        let before = newest_in(job_dir);
        let mut child = spawn_weir(&["run", "--quiet", job, "--from-latest"], &log);
        let limit = if killed < kills {
            let start = Instant::now();
            while newest_in(job_dir) <= before && child.try_wait().unwrap().is_none() {
                assert!(
                    start.elapsed() < Duration::from_secs(120),
                    "no checkpoint completes:\n{}",
                    std::fs::read_to_string(&log).unwrap()
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            Duration::from_millis(next() % max_delay.as_millis().max(1) as u64)
        } else {
            Duration::from_secs(600)
        };
        if let Some(ok) = wait_for(&mut child, limit) {
            let log = std::fs::read_to_string(&log).unwrap();
            assert!(ok, "run {killed} failed:\n{log}");
            break;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        killed += 1;
    }
    assert!(
        killed >= kills,
        "the job finished after only {killed} kills"
    );
}

/// Checks the committed output of the word count is exactly that of a run
/// without failures: every word's counts 1, 2, …, n once each, in order,
/// and n the word's frequency in the input.
pub(super) fn assert_exactly_once(out: &Path, text: &str) {
    let expected = reference_counts(text);
    let total: u64 = expected.values().sum();
    let (counts, lines) = read_counts(out);
    assert_eq!(lines, total, "one committed record per input word");
    assert_eq!(counts, expected);
    let hidden: Vec<PathBuf> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    assert!(hidden.is_empty(), "uncommitted parts left: {hidden:?}");
}

/// The id of the newest completed checkpoint in `storage`, 0 if none.
fn newest_completed(storage: &Path) -> u64 {
    completed_checkpoints(storage)
        .iter()
        .filter_map(|c| c.strip_prefix("chk-")?.parse().ok())
        .max()
        .unwrap_or(0)
}

/// The names of the completed `chk-<n>` directories in `storage`, sorted.
fn completed_checkpoints(storage: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(storage.join("wordcount")) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("_metadata").is_file())
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn kill_9_at_random_moments_then_resuming_commits_every_record_exactly_once() {
    kill_and_resume("incremental = true");
}

#[test]
fn unaligned_checkpoints_survive_kill_9_exactly_once_too() {
    kill_and_resume("unaligned = true\nincremental = true");
}

#[test]
fn whole_checkpoints_survive_kill_9_exactly_once_too() {
    kill_and_resume("");
}

/// A state larger than what changes between two checkpoints, as
/// incremental checkpoints are for: 400,000 words once each, then `hot`
/// lines of words of a vocabulary of 10,000 only.
fn incremental_corpus(hot: usize) -> String {
    let mut text: String = (0..40_000)
        .map(|line| {
            let words: Vec<String> = (0..10).map(|w| format!("w{}", line * 10 + w)).collect();
            words.join(" ") + "\n"
        })
        .collect();
    text.push_str(&corpus(hot, 10_000));
    text
}

/// Whether the newest completed checkpoint in `storage` is incremental.
fn newest_is_incremental(storage: &Path) -> bool {
    let newest = newest_completed(storage);
    std::fs::read_to_string(
        storage
            .join("wordcount")
            .join(format!("chk-{newest}"))
            .join("_metadata"),
    )
    .is_ok_and(|m| m.contains("\"base\""))
}

/// How many of the completed checkpoints in `storage` are incremental (a
/// subtask lists a `base`).
fn incremental_checkpoints(storage: &Path) -> usize {
    completed_checkpoints(storage)
        .iter()
        .filter(|c| {
            let path = storage.join("wordcount").join(c).join("_metadata");
            std::fs::read_to_string(path).is_ok_and(|m| m.contains("\"base\""))
        })
        .count()
}

/// Runs the 5M-word count with checkpoints (plus `extra` settings),
/// `kill -9`s it at random moments at least 5 times, resumes each time with
/// `--from-latest`, and checks the committed output is exactly once.
fn kill_and_resume(extra: &str) {
    let dir = tempfile::tempdir().unwrap();
    let whole = !extra.contains("incremental = true");
    let deltas = !whole;
    let text = if deltas {
        incremental_corpus(460_000)
    } else {
        corpus(500_000, 20_000)
    };
    assert!(text.split_whitespace().count() >= 5_000_000);
    let input = dir.path().join("corpus.txt");
    std::fs::write(&input, &text).unwrap();
    let (out, storage) = (dir.path().join("out"), dir.path().join("checkpoints"));
    let job = dir.path().join("job.toml");
    std::fs::write(&job, checkpointed_job(&input, &out, &storage, extra)).unwrap();
    let job = job.to_str().unwrap();

    let mut next = kill_schedule();
    let mut kills = 0;
    let mut refused = false;
    // An upload a kill interrupted, as a local store leaves it (a staging
    // file its listing hides), and a checkpoint that never completed: the
    // next run's garbage collection finds and removes both.
    let mut planted: Vec<std::path::PathBuf> = Vec::new();
    let mut incremental = 0;
    let finished = loop {
        let log = dir.path().join(format!("run-{kills}.log"));
        let before = newest_completed(&storage);
        if kills == 1 && before > 0 {
            let job_dir = storage.join("wordcount");
            let staging = job_dir.join(format!("chk-{before}/count-0.state#41"));
            let incomplete = job_dir.join(format!("chk-{}", before + 1));
            std::fs::create_dir_all(&incomplete).unwrap();
            std::fs::write(&staging, b"half an upload").unwrap();
            std::fs::write(incomplete.join("count-1.state#7"), b"").unwrap();
            std::fs::write(incomplete.join("tokenize-0.state"), b"").unwrap();
            planted = vec![staging, incomplete];
        }
        let mut child = spawn_weir(&["run", "--quiet", job, "--from-latest"], &log);
        let limit = if kills < 5 {
            // Each life makes progress — a new checkpoint completes — then
            // dies a random moment later: short enough that five lives stay
            // well under the ~3.5 s an uninterrupted run takes here.
            // Incremental: two, since a life's first checkpoint is whole.
            // Incremental: until the newest checkpoint extends an earlier
            // one (a life's first is whole), for up to 20 s.
            let start = Instant::now();
            let progressed = || {
                newest_completed(&storage) > before
                    && (!deltas
                        || start.elapsed() > Duration::from_secs(20)
                        || newest_is_incremental(&storage))
            };
            while !progressed() && child.try_wait().unwrap().is_none() {
                assert!(
                    start.elapsed() < Duration::from_secs(120),
                    "no checkpoint completes"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            if child.try_wait().unwrap().is_none() {
                // The run swept them before it restored: nothing of them
                // is left by the time a new checkpoint completed.
                assert!(
                    planted.iter().all(|p| !p.exists()),
                    "left behind: {planted:?}"
                );
            }
            Duration::from_millis(next() % 250)
        } else {
            Duration::from_secs(600)
        };
        if let Some(ok) = wait_for(&mut child, limit) {
            let log = std::fs::read_to_string(&log).unwrap();
            assert!(ok, "run {kills} failed:\n{log}");
            if kills > 0 {
                assert!(
                    log.contains("restoring job `wordcount` from checkpoint")
                        || log.contains("starting from scratch"),
                    "a resumed run says where it starts:\n{log}"
                );
            }
            break kills;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        incremental += incremental_checkpoints(&storage);
        if !refused && !completed_checkpoints(&storage).is_empty() {
            // Without a flag the job refuses to start over its checkpoints,
            // and touches neither them nor the sink's output.
            let before = (output_lines(&out), completed_checkpoints(&storage));
            let o = weir(&["run", "--quiet", job]);
            assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
            let e = stderr(&o);
            assert!(
                e.contains("completed checkpoint") && e.contains("--from-latest"),
                "{e}"
            );
            assert_eq!(
                (output_lines(&out), completed_checkpoints(&storage)),
                before,
                "a refused run changes nothing"
            );
            let listing = weir(&["checkpoints", job]);
            assert!(listing.status.success(), "{}", stderr(&listing));
            let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
            assert!(
                listing.contains("completed") && listing.contains("count"),
                "{listing}"
            );
            refused = true;
        }
    };
    assert!(
        finished >= 5,
        "the job finished after only {finished} kills"
    );
    assert!(refused, "no checkpoint completed between kills");
    // Incremental: resumed lives restore from checkpoints that extend
    // earlier ones.
    if whole {
        assert_eq!(incremental, 0);
    } else if deltas {
        assert!(
            incremental > 0,
            "no incremental checkpoint was left by a kill"
        );
    }
    assert!(!planted.is_empty(), "the leftovers of a crash were planted");
    let second = std::fs::read_to_string(dir.path().join("run-1.log")).unwrap();
    assert!(
        second.contains("file(s) no completed checkpoint of job `wordcount` references"),
        "{second}"
    );
    assert_exactly_once(&out, &text);
    // A finished job's checkpoints are discarded, as in Flink.
    assert!(completed_checkpoints(&storage).is_empty());
}

#[test]
fn an_incremental_checkpoint_reads_its_base_and_says_what_is_missing_or_moved() {
    let dir = tempfile::tempdir().unwrap();
    let text = incremental_corpus(460_000);
    let input = dir.path().join("corpus.txt");
    std::fs::write(&input, &text).unwrap();
    let (out, storage) = (dir.path().join("out"), dir.path().join("checkpoints"));
    let job = dir.path().join("job.toml");
    std::fs::write(
        &job,
        checkpointed_job(&input, &out, &storage, "retained = 50\nincremental = true"),
    )
    .unwrap();
    let job = job.to_str().unwrap();
    let log = dir.path().join("run.log");
    let mut child = spawn_weir(&["run", "--quiet", job], &log);
    let start = Instant::now();
    while incremental_checkpoints(&storage) == 0 {
        assert!(
            child.try_wait().unwrap().is_none() && start.elapsed() < Duration::from_secs(120),
            "no incremental checkpoint:\n{}",
            std::fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let job_dir = storage.join("wordcount");
    let delta = completed_checkpoints(&storage)
        .into_iter()
        .find(|c| {
            std::fs::read_to_string(job_dir.join(c).join("_metadata"))
                .unwrap()
                .contains("\"base\"")
        })
        .unwrap();
    let at = job_dir.join(&delta);
    let metadata: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(at.join("_metadata")).unwrap()).unwrap();
    let base = metadata["vertices"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|v| v["subtasks"].as_array().unwrap())
        .find_map(|s| s.get("base"))
        .unwrap()[0]
        .clone();
    let base_file = job_dir
        .join(format!("chk-{}", base["checkpoint"]))
        .join(base["file"].as_str().unwrap());
    // Read whole: every key of the count, from its base and its deltas.
    let inspect = weir(&["savepoint", "inspect", at.to_str().unwrap()]);
    assert!(inspect.status.success(), "{}", stderr(&inspect));
    let shown = String::from_utf8_lossy(&inspect.stdout).into_owned();
    assert!(shown.contains("state `count`  value"), "{shown}");
    // Moved out of its job's directory, it says why it cannot be read.
    let moved = dir.path().join("moved");
    std::fs::create_dir(&moved).unwrap();
    std::fs::copy(at.join("_metadata"), moved.join("_metadata")).unwrap();
    let o = weir(&["run", "--quiet", job, "-s", moved.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("is an incremental checkpoint") && stderr(&o).contains(&delta),
        "{}",
        stderr(&o)
    );
    // A base file gone: the restore fails naming it, and nothing is lost.
    let kept = dir.path().join("kept.state");
    std::fs::rename(&base_file, &kept).unwrap();
    let o = weir(&["run", "--quiet", job, "-s", at.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains(&base_file.display().to_string()) && e.contains("is missing"),
        "{e}"
    );
    std::fs::rename(&kept, &base_file).unwrap();
    // With it back, the job resumes from the incremental checkpoint and
    // commits every word exactly once.
    let o = weir(&["run", "--quiet", job, "-s", at.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_exactly_once(&out, &text);
}

#[test]
fn damaged_or_missing_checkpoints_fail_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let text = corpus(300_000, 20_000);
    let input = dir.path().join("corpus.txt");
    std::fs::write(&input, &text).unwrap();
    let (out, storage) = (dir.path().join("out"), dir.path().join("checkpoints"));
    let job = dir.path().join("job.toml");
    // Keep every checkpoint so one can be damaged and another used.
    std::fs::write(
        &job,
        checkpointed_job(&input, &out, &storage, "retained = 100"),
    )
    .unwrap();
    let job = job.to_str().unwrap();

    let missing = dir.path().join("no-such-checkpoint");
    let o = weir(&["run", "--quiet", job, "-s", missing.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("no-such-checkpoint"), "{}", stderr(&o));

    // Run until two checkpoints completed, then kill.
    let mut child = spawn_weir(&["run", "--quiet", job], &dir.path().join("run.log"));
    let start = Instant::now();
    while completed_checkpoints(&storage).len() < 2 {
        assert!(start.elapsed() < Duration::from_secs(120), "no checkpoints");
        assert!(child.try_wait().unwrap().is_none(), "finished too early");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let mut chks = completed_checkpoints(&storage);
    chks.sort_by_key(|c| c[4..].parse::<u64>().unwrap());
    let (older, latest) = (
        storage.join("wordcount").join(&chks[0]),
        storage.join("wordcount").join(chks.last().unwrap()),
    );

    // A corrupt state file: the error names it, nothing is deleted.
    let state = latest.join("count-0.state");
    let mut bytes = std::fs::read(&state).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&state, &bytes).unwrap();
    let o = weir(&["run", "--quiet", job, "--from-latest"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("count-0.state"), "{}", stderr(&o));
    assert!(state.is_file() && latest.join("_metadata").is_file());

    // A truncated _metadata: listed as corrupt, refused for --from-latest.
    let meta = latest.join("_metadata");
    let m = std::fs::read(&meta).unwrap();
    std::fs::write(&meta, &m[..m.len() / 2]).unwrap();
    let listing = weir(&["checkpoints", job]);
    assert!(
        String::from_utf8_lossy(&listing.stdout).contains("corrupt"),
        "{}",
        String::from_utf8_lossy(&listing.stdout)
    );
    let o = weir(&["run", "--quiet", job, "--from-latest"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("unreadable"), "{}", stderr(&o));

    // A checkpoint that does not fit the job is refused, naming what.
    let older_meta = older.join("_metadata");
    let original = std::fs::read_to_string(job).unwrap();
    for (edit, needle) in [
        (
            original
                .replace("uid = \"count\"", "uid = \"counter\"")
                .replace("input = \"count\"", "input = \"counter\""),
            "uids the job does not have: count",
        ),
        (
            original.replace(
                "name = \"wordcount\"",
                "name = \"wordcount\"\nmax_parallelism = 64",
            ),
            "max_parallelism 128",
        ),
    ] {
        std::fs::write(job, edit).unwrap();
        let o = weir(&["run", "--quiet", job, "-s", older_meta.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{needle}: {}", stderr(&o));
    }
    std::fs::write(job, original).unwrap();

    // The older checkpoint still restores, with `-s` on its _metadata. A
    // restore never retracts committed output: the parts committed after
    // that checkpoint stay, byte for byte (so what they counted appears
    // twice, as with Flink's file sink), and every word ends at its count.
    let committed: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("part-")
        })
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    let o = weir(&[
        "run",
        "--quiet",
        job,
        "-s",
        older.join("_metadata").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    for (path, bytes) in &committed {
        assert_eq!(&std::fs::read(path).unwrap(), bytes, "{}", path.display());
    }
    let mut last: HashMap<String, u64> = HashMap::new();
    for line in output_lines(&out) {
        let (word, count) = line.split_once('\t').unwrap();
        let m = last.entry(word.to_owned()).or_default();
        *m = (*m).max(count.parse().unwrap());
    }
    assert_eq!(last, reference_counts(&text));
}

/// Word count with the faulty plugin between tokenize and count.
fn faulty_wordcount_job(
    input: &Path,
    out: &Path,
    storage: &Path,
    mode: &str,
    restart: &str,
) -> String {
    let faulty = format!(
        "uid = \"faulty\"\nplugin = \"{}\"\nconfig = \"{mode}\"\ninput = \"tokenize\"\n\n[[operators]]\nuid = \"count\"",
        plugins::FAULTY
    );
    let job = wordcount_job(input, out, 2)
        .replacen("uid = \"count\"", &faulty, 1)
        .replacen(
            "input = \"tokenize\"\npartition = \"hash\"",
            "input = \"faulty\"\npartition = \"hash\"",
            1,
        );
    assert!(
        job.contains("input = \"faulty\""),
        "the count reads the faulty operator"
    );
    format!(
        "{job}\n[checkpoints]\ninterval = \"100ms\"\nstorage = \"{storage}\"\n\n[restart]\n{restart}\n",
        storage = storage.display()
    )
}

#[test]
fn a_plugin_that_traps_once_restarts_in_process_from_the_latest_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let text = corpus(200_000, 20_000);
    let input = dir.path().join("corpus.txt");
    std::fs::write(&input, &text).unwrap();
    // On local files and in memory: an in-process restart finds its
    // checkpoints in either.
    for storage in [
        dir.path().join("checkpoints"),
        PathBuf::from("memory://trap"),
    ] {
        let out = dir.path().join("out");
        let job = faulty_wordcount_job(
            &input,
            &out,
            &storage,
            "trap-once:600000",
            // It traps only on its first attempt: not deterministic, so it
            // opts in to restarts.
            "strategy = \"fixed-delay\"\nattempts = 1\ndelay = \"50ms\"\noperator_errors = \"restart\"",
        );
        let o = run_job(dir.path(), &job);
        let e = stderr(&o);
        assert!(o.status.success(), "{}: {e}", storage.display());
        assert!(
            e.contains("asked to trap once, at record 600000") && e.contains("restart 1"),
            "the restart is logged with its cause:\n{e}"
        );
        assert!(
            e.contains("from checkpoint"),
            "it restarted from a checkpoint:\n{e}"
        );
        assert_exactly_once(&out, &text);
    }
}

#[test]
fn a_plugin_that_keeps_trapping_fails_the_job_once_restarts_are_used_up() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("corpus.txt");
    std::fs::write(&input, corpus(1_000, 100)).unwrap();
    let (out, storage) = (dir.path().join("out"), dir.path().join("checkpoints"));
    let job = faulty_wordcount_job(
        &input,
        &out,
        &storage,
        "trap",
        "strategy = \"fixed-delay\"\nattempts = 2\ndelay = \"10ms\"\noperator_errors = \"restart\"",
    );
    let o = run_job(dir.path(), &job);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert_eq!(
        e.matches("restart ").count(),
        2,
        "two restarts, then the failure:\n{e}"
    );
    assert_operator_failure(&o, "faulty", plugins::FAULTY, "faulty plugin asked to trap");

    // By default an operator's own failure is not retried: a sandboxed
    // plugin would fail the same way again.
    let job = faulty_wordcount_job(
        &input,
        &dir.path().join("out-default"),
        &dir.path().join("checkpoints-default"),
        "trap",
        "strategy = \"fixed-delay\"\nattempts = 2\ndelay = \"10ms\"",
    );
    let o = run_job(dir.path(), &job);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert_eq!(e.matches("restart ").count(), 0, "no restart:\n{e}");
    assert_operator_failure(&o, "faulty", plugins::FAULTY, "faulty plugin asked to trap");
}

#[test]
fn unaligned_and_at_least_once_in_process_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let text = corpus(100_000, 5_000);
    let input = dir.path().join("corpus.txt");
    std::fs::write(&input, &text).unwrap();
    let restart =
        "strategy = \"fixed-delay\"\nattempts = 1\ndelay = \"10ms\"\noperator_errors = \"restart\"";
    for (mode, settings) in [
        ("unaligned", "unaligned = true"),
        (
            "aligned-then-unaligned",
            "unaligned = true\naligned_timeout = \"1ms\"",
        ),
        ("at-least-once", "mode = \"at-least-once\""),
    ] {
        let (out, storage) = (
            dir.path().join(mode),
            dir.path().join(format!("{mode}-chk")),
        );
        let job = faulty_wordcount_job(&input, &out, &storage, "trap-once:300000", restart)
            .replace("[checkpoints]", &format!("[checkpoints]\n{settings}"));
        let o = run_job(dir.path(), &job);
        let e = stderr(&o);
        assert!(o.status.success(), "{mode}: {e}");
        assert!(e.contains("restart 1"), "{mode}: {e}");
        if mode != "at-least-once" {
            assert_exactly_once(&out, &text);
        } else {
            // Duplicates allowed, loss not: every word reaches its count
            // (replayed records count twice, so maybe more).
            let expected = reference_counts(&text);
            let mut max: HashMap<String, u64> = HashMap::new();
            for line in output_lines(&out) {
                let (word, count) = line.split_once('\t').unwrap();
                let m = max.entry(word.to_owned()).or_default();
                *m = (*m).max(count.parse().unwrap());
            }
            assert_eq!(max.len(), expected.len(), "{mode}: every word counted");
            let short: Vec<_> = expected.iter().filter(|(w, n)| max[*w] < **n).collect();
            assert!(short.is_empty(), "{mode}: counts lost: {short:?}");
        }
    }
}

#[test]
fn sigterm_cancels_and_retention_on_cancel_keeps_or_deletes_the_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("corpus.txt");
    std::fs::write(&input, corpus(500_000, 20_000)).unwrap();
    for retention in ["retain", "delete"] {
        let (out, storage) = (dir.path().join("out"), dir.path().join(retention));
        let job = dir.path().join(format!("{retention}.toml"));
        let extra = format!("retention_on_cancel = \"{retention}\"");
        std::fs::write(&job, checkpointed_job(&input, &out, &storage, &extra)).unwrap();
        let log = dir.path().join(format!("{retention}.log"));
        let mut child = spawn_weir(&["run", "--quiet", job.to_str().unwrap()], &log);
        let start = Instant::now();
        while newest_completed(&storage) == 0 {
            assert!(start.elapsed() < Duration::from_secs(120), "no checkpoint");
            assert!(child.try_wait().unwrap().is_none(), "finished too early");
            std::thread::sleep(Duration::from_millis(5));
        }
        let kill = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        let status = child.wait().unwrap();
        let log = std::fs::read_to_string(&log).unwrap();
        assert_eq!(status.code(), Some(130), "{log}");
        assert!(log.contains("cancelled"), "{log}");
        if retention == "retain" {
            assert!(newest_completed(&storage) > 0, "{log}");
            assert!(log.contains("--from-latest"), "{log}");
        } else {
            assert_eq!(newest_completed(&storage), 0, "{log}");
            assert!(log.contains("deleted"), "{log}");
        }
    }
}

/// The S3 test location `.ci/run` provides (a local S3-compatible server).
fn s3_url(test: &str) -> Option<String> {
    match std::env::var("WEIR_TEST_S3_URL") {
        Ok(url) => Some(format!(
            "{}/{test}-{}",
            url.trim_end_matches('/'),
            std::process::id()
        )),
        Err(_) => {
            eprintln!(
                "skipping {test}: WEIR_TEST_S3_URL is not set (.ci/run starts a local S3 server)"
            );
            None
        }
    }
}

#[test]
fn checkpoints_in_s3_survive_kill_9_and_resume_exactly_once() {
    let Some(url) = s3_url("e2e-kill") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let text = corpus(300_000, 20_000);
    let input = dir.path().join("corpus.txt");
    std::fs::write(&input, &text).unwrap();
    let out = dir.path().join("out");
    let job = dir.path().join("job.toml");
    let toml = checkpointed_job(&input, &out, Path::new("UNUSED"), "")
        .replace("storage = \"UNUSED\"", &format!("storage = \"{url}\""));
    std::fs::write(&job, toml).unwrap();
    let job = job.to_str().unwrap();

    let mut child = spawn_weir(&["run", "--quiet", job], &dir.path().join("run.log"));
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no checkpoint in S3"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before a kill"
        );
        let listing = weir(&["checkpoints", job]);
        if String::from_utf8_lossy(&listing.stdout).contains("completed") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let o = weir(&["run", "--quiet", job]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "refuses to start over: {}",
        stderr(&o)
    );
    assert!(stderr(&o).contains(&url), "{}", stderr(&o));
    let o = weir_with_env(
        &["run", "--quiet", job, "--from-latest"],
        &[("WEIR_LOG", "info")],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("restoring job `wordcount` from checkpoint"),
        "{}",
        stderr(&o)
    );
    assert_exactly_once(&out, &text);
}

#[test]
fn python_and_javascript_operators_take_part_in_checkpoints_the_same_way() {
    let dir = tempfile::tempdir().unwrap();
    // Small: the interpreters count 0.04–0.2 M words/s.
    let text = corpus(10_000, 2_000);
    let input = dir.path().join("corpus.txt");
    std::fs::write(&input, &text).unwrap();
    for (language, plugin) in [
        ("python", plugins::PY_WORD_COUNT),
        ("javascript", plugins::JS_WORD_COUNT),
    ] {
        let (out, storage) = (
            dir.path().join(language),
            dir.path().join(format!("{language}-chk")),
        );
        let job = faulty_wordcount_job(
            &input,
            &out,
            &storage,
            "trap-once:45000",
            "strategy = \"fixed-delay\"\nattempts = 1\ndelay = \"10ms\"\noperator_errors = \"restart\"",
        )
        .replace(plugins::WORD_COUNT, plugin)
        // Unaligned: behind the slow interpreter an aligned barrier would
        // wait for the full queues, so the trap could come first.
        .replace("[checkpoints]", "[checkpoints]\nunaligned = true");
        let o = run_job(dir.path(), &job);
        let e = stderr(&o);
        assert!(o.status.success(), "{language}: {e}");
        assert!(
            e.contains("restart 1") && e.contains("from checkpoint"),
            "{language}: {e}"
        );
        assert_exactly_once(&out, &text);
    }
}

#[test]
fn a_running_job_holds_a_lease_a_second_run_and_delete_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("checkpoints");
    let job = dir.path().join("job.toml");
    std::fs::write(
        &job,
        format!(
            r#"
name = "leased"

[[sources]]
uid = "words"
type = "datagen"
seed = 1
vocabulary = 100
records = 100000000
rate = 1000

[[sinks]]
uid = "out"
type = "file"
path = "{out}"
input = "words"

[checkpoints]
interval = "100ms"
storage = "{storage}"
"#,
            out = dir.path().join("out").display(),
            storage = storage.display(),
        ),
    )
    .unwrap();
    let job = job.to_str().unwrap();
    let log = dir.path().join("run.log");
    let mut child = spawn_weir(&["run", "--quiet", job], &log);
    let start = Instant::now();
    let run_id = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(id) = text
            .lines()
            .find(|l| l.contains("REST API on"))
            .and_then(|l| l.split("(id ").nth(1)?.split(')').next())
        {
            break id.to_owned();
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{text}");
        assert!(child.try_wait().unwrap().is_none(), "{text}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let holder = format!("pid {}, run {run_id}", child.id());
    for args in [
        vec!["run", "--quiet", job],
        vec!["run", "--quiet", job, "--from-latest"],
        vec!["checkpoints", job, "--delete"],
    ] {
        let o = weir(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("job `leased` is running elsewhere"),
            "{args:?}: {}",
            stderr(&o)
        );
        assert!(stderr(&o).contains(&holder), "{args:?}: {}", stderr(&o));
    }
    assert!(child.try_wait().unwrap().is_none(), "the holder still runs");
    assert!(storage.join("leased/_lease").is_dir());
    // --force deletes anyway.
    let o = weir(&["checkpoints", job, "--delete", "--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    child.kill().unwrap();
    child.wait().unwrap();
    // A holder killed on this host holds nothing.
    let o = weir(&["checkpoints", job, "--delete"]);
    assert!(o.status.success(), "{}", stderr(&o));
}
