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
interval = "200ms"
storage = "{storage}"
{extra}
"#,
        job = wordcount_job(input, out, 2),
        storage = storage.display(),
    )
}

fn spawn_weir(args: &[&str], log: &Path) -> Child {
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("weir-plugin-cache");
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .env("WEIR_CACHE_DIR", cache)
        .env("WEIR_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("weir starts")
}

/// Waits up to `limit` for `child`; `Some(success)` if it exited.
fn wait_for(child: &mut Child, limit: Duration) -> Option<bool> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status.success());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// Checks the committed output of the word count is exactly that of a run
/// without failures: every word's counts 1, 2, …, n once each, in order,
/// and n the word's frequency in the input.
fn assert_exactly_once(out: &Path, text: &str) {
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

fn completed_checkpoints(storage: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(storage.join("wordcount")) else {
        return Vec::new();
    };
    entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("_metadata").is_file())
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn kill_9_at_random_moments_then_resuming_commits_every_record_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let text = corpus(500_000, 20_000);
    assert!(text.split_whitespace().count() >= 5_000_000);
    let input = dir.path().join("corpus.txt");
    std::fs::write(&input, &text).unwrap();
    let (out, storage) = (dir.path().join("out"), dir.path().join("checkpoints"));
    let job = dir.path().join("job.toml");
    std::fs::write(&job, checkpointed_job(&input, &out, &storage, "")).unwrap();
    let job = job.to_str().unwrap();

    // xorshift, seeded per run; the seed is printed to replay a failure.
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("kill schedule seed: {seed}");
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut kills = 0;
    let mut refused = false;
    let finished = loop {
        let log = dir.path().join(format!("run-{kills}.log"));
        let mut child = spawn_weir(&["run", "--quiet", job, "--from-latest"], &log);
        let limit = if kills < 5 {
            // Short lives: five of them stay well under the ~3.5 s an
            // uninterrupted run takes here, so every kill lands mid-run.
            Duration::from_millis(150 + next() % 500)
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
        if !refused && !completed_checkpoints(&storage).is_empty() {
            // Without a flag the job refuses to start over its checkpoints.
            let o = weir(&["run", "--quiet", job]);
            assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
            let e = stderr(&o);
            assert!(
                e.contains("completed checkpoint") && e.contains("--from-latest"),
                "{e}"
            );
            assert!(!out.join("part-0-0").exists() || read_counts(&out).1 > 0);
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
    assert_exactly_once(&out, &text);
    // A finished job's checkpoints are discarded, as in Flink.
    assert!(completed_checkpoints(&storage).is_empty());
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

    // The older checkpoint still restores, with `-s` on its _metadata, and
    // the output is exactly once.
    let o = weir(&[
        "run",
        "--quiet",
        job,
        "-s",
        older.join("_metadata").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_exactly_once(&out, &text);
}

/// Word count with the faulty plugin between tokenize and count.
fn faulty_wordcount_job(
    input: &Path,
    out: &Path,
    storage: &Path,
    mode: &str,
    restart: &str,
) -> String {
    format!(
        r#"
name = "wordcount"
parallelism = 2

[[sources]]
uid = "lines"
type = "file"
path = "{input}"
parallelism = 1

[[operators]]
uid = "tokenize"
plugin = "{tokenize}"
input = "lines"
partition = "rebalance"

[[operators]]
uid = "faulty"
plugin = "{faulty}"
config = "{mode}"
input = "tokenize"

[[operators]]
uid = "count"
plugin = "{count}"
input = "faulty"
partition = "hash"

[[sinks]]
uid = "out"
type = "file"
path = "{out}"
input = "count"

[checkpoints]
interval = "100ms"
storage = "{storage}"

[restart]
{restart}
"#,
        input = input.display(),
        out = out.display(),
        storage = storage.display(),
        tokenize = plugins::TOKENIZE,
        faulty = plugins::FAULTY,
        count = plugins::WORD_COUNT,
    )
}

#[test]
fn a_plugin_that_traps_once_restarts_in_process_from_the_latest_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let text = corpus(200_000, 20_000);
    let input = dir.path().join("corpus.txt");
    std::fs::write(&input, &text).unwrap();
    let (out, storage) = (dir.path().join("out"), dir.path().join("checkpoints"));
    let job = faulty_wordcount_job(
        &input,
        &out,
        &storage,
        "trap-once:600000",
        "strategy = \"fixed-delay\"\nattempts = 1\ndelay = \"50ms\"",
    );
    let o = run_job(dir.path(), &job);
    let e = stderr(&o);
    assert!(o.status.success(), "{e}");
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
        "strategy = \"fixed-delay\"\nattempts = 2\ndelay = \"10ms\"",
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
}
