//! Fuzzing on the stable toolchain, for `cargo test`: a target's corpus (`fuzz/corpus/<target>/`)
//! is replayed, then, until a time budget runs out, the target is fed structured inputs built
//! with `arbitrary` and mutations of the corpus (bit flips, truncations, splices, inflated
//! length fields). Any input that panics the target is saved under `target/fuzz-crashes/` and
//! named in the failure. There is no coverage feedback here; `cargo fuzz` (see `fuzz/`) runs the
//! same oracles on the same corpus with libFuzzer where a nightly toolchain exists.
//!
//! Test support only: crates take it as a dev-dependency, nothing ships with it.
//!
//! Environment: `OPAMPD_FUZZ_SECS` (budget per target, default [`DEFAULT_SECS`]; 0 replays the
//! corpus only), `OPAMPD_FUZZ_SEED` (the generator's seed, default: from the clock, printed),
//! `OPAMPD_FUZZ_WRITE_CORPUS=1` (rewrite the seed files, see [`sync_seeds`]).

use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use arbitrary::{self, Unstructured};

pub mod arb;
mod mutate;

pub use mutate::{Rng, mutate, protobuf_length_fields};

/// Seconds each target runs past its corpus when `OPAMPD_FUZZ_SECS` is unset: small, so the
/// whole suite stays quick; CI sets more (see `.ci/run`).
pub const DEFAULT_SECS: f64 = 3.0;

const SECS_ENV: &str = "OPAMPD_FUZZ_SECS";
const SEED_ENV: &str = "OPAMPD_FUZZ_SEED";
const WRITE_CORPUS_ENV: &str = "OPAMPD_FUZZ_WRITE_CORPUS";

/// Of the inputs a target accepts, one in this many joins the pool mutations start from: a
/// cheap stand-in for coverage feedback that lets mutations walk among valid inputs.
const KEEP_ACCEPTED_ONE_IN: u64 = 8;
/// Inputs kept in memory at most (corpus included).
const MAX_POOL: usize = 2048;
/// Bytes handed to a structured generator per input, at most.
const MAX_UNSTRUCTURED: u64 = 4096;

/// The repository root (this crate is `crates/fuzz-support`).
pub fn repository_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.ancestors().nth(2).unwrap_or(manifest_dir).to_path_buf()
}

/// `fuzz/corpus/<target>`, shared with the `cargo fuzz` targets.
pub fn corpus_dir(target: &str) -> PathBuf {
    repository_root().join("fuzz/corpus").join(target)
}

/// Where an input that panicked a target is saved: `target/fuzz-crashes/<target>`.
pub fn crash_dir(target: &str) -> PathBuf {
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| repository_root().join("target"), PathBuf::from);
    target_dir.join("fuzz-crashes").join(target)
}

/// Every file of the target's corpus, by name. Panics when the directory is missing or empty:
/// a fuzz test that silently replays nothing would pass for the wrong reason.
pub fn load_corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let entries =
        fs::read_dir(&dir).unwrap_or_else(|e| panic!("corpus {} unreadable: {e}", dir.display()));
    let mut files: Vec<(String, Vec<u8>)> = entries
        .map(|entry| {
            let path = entry.expect("corpus entry").path();
            let bytes = fs::read(&path)
                .unwrap_or_else(|e| panic!("corpus file {} unreadable: {e}", path.display()));
            (path.file_name().unwrap_or_default().to_string_lossy().into_owned(), bytes)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    files
}

/// Keeps the generated seed files of a target's corpus (`seed-<name>`) in the repository: with
/// `OPAMPD_FUZZ_WRITE_CORPUS=1` they are (re)written from `seeds`; otherwise each must exist,
/// so a seed added to a harness is not forgotten in the corpus `cargo fuzz` starts from.
pub fn sync_seeds(target: &str, seeds: &[(&str, Vec<u8>)]) {
    let dir = corpus_dir(target);
    let write = std::env::var(WRITE_CORPUS_ENV).is_ok_and(|v| v == "1");
    if write {
        fs::create_dir_all(&dir).expect("create corpus dir");
    }
    let mut missing = Vec::new();
    for (name, bytes) in seeds {
        let path = dir.join(format!("seed-{name}"));
        if write {
            fs::write(&path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        } else if !path.is_file() {
            missing.push(path.display().to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "seed files missing from the corpus (run with {WRITE_CORPUS_ENV}=1): {missing:?}"
    );
}

/// What one run did, for the log line and for sanity checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub corpus: usize,
    pub structured: u64,
    pub mutated: u64,
    /// Inputs the target accepted (decoded, parsed), of all it was fed.
    pub accepted: u64,
}

/// One target's run: its corpus, extra in-memory seeds, a dictionary for mutations, and a
/// cap on input length. See the [crate docs](crate).
#[derive(Debug)]
pub struct Fuzz<'a> {
    target: &'static str,
    seeds: Vec<Vec<u8>>,
    dictionary: &'a [&'a [u8]],
    max_len: usize,
}

impl<'a> Fuzz<'a> {
    pub fn new(target: &'static str) -> Self {
        Self { target, seeds: Vec::new(), dictionary: &[], max_len: 64 << 10 }
    }

    /// Inputs fed after the corpus and mutated like it (the seeds as the code writes them now).
    pub fn seeds(mut self, seeds: impl IntoIterator<Item = Vec<u8>>) -> Self {
        self.seeds.extend(seeds);
        self
    }

    /// Tokens that mutations insert or overwrite with (keywords, delimiters, magic bytes).
    pub fn dictionary(mut self, words: &'a [&'a [u8]]) -> Self {
        self.dictionary = words;
        self
    }

    /// Mutated inputs are cut to this length.
    pub fn max_len(mut self, max_len: usize) -> Self {
        self.max_len = max_len;
        self
    }

    /// Feeds `check` every corpus file and seed, then, within the budget, alternately a value
    /// from `structured` (which may assert round trips itself and returns the bytes it built,
    /// or `None` when it built none) and a mutation of the pool. `check` returns whether it
    /// accepted the input (decoded it); it must panic on any violated property.
    ///
    /// A panic is re-raised with the path of the saved input and the seed.
    pub fn run(
        self,
        mut check: impl FnMut(&[u8]) -> bool,
        mut structured: impl FnMut(&mut Unstructured<'_>) -> arbitrary::Result<Option<Vec<u8>>>,
    ) -> Stats {
        let budget = budget();
        let seed = seed(self.target);
        let corpus = load_corpus(self.target);
        let mut rng = Rng::new(seed);
        let mut stats = Stats { corpus: corpus.len(), ..Stats::default() };
        let mut pool: Vec<Vec<u8>> = Vec::with_capacity(MAX_POOL);

        let mut exec = |input: &[u8], kind: &str, stats: &mut Stats| -> bool {
            let accepted = guarded(self.target, seed, kind, input, || check(input));
            stats.accepted += u64::from(accepted);
            accepted
        };

        for (name, bytes) in &corpus {
            exec(bytes, &format!("corpus file {name}"), &mut stats);
            pool.push(bytes.clone());
        }
        for bytes in &self.seeds {
            exec(bytes, "seed", &mut stats);
            pool.push(bytes.clone());
        }
        let fixed = pool.len();

        let started = Instant::now();
        let mut iteration = 0u64;
        while started.elapsed() < budget {
            iteration += 1;
            let (input, kind) = if iteration.is_multiple_of(4) {
                let len = rng.below(MAX_UNSTRUCTURED + 1) as usize;
                let raw = rng.bytes(len);
                let built = guarded(self.target, seed, "structured generator", &raw, || {
                    structured(&mut Unstructured::new(&raw)).ok().flatten()
                });
                let Some(input) = built else { continue };
                stats.structured += 1;
                (input, "structured")
            } else {
                let base = &pool[rng.below(pool.len() as u64) as usize];
                stats.mutated += 1;
                (mutate(&mut rng, base, &pool, self.dictionary, self.max_len), "mutated")
            };
            let accepted = exec(&input, kind, &mut stats);
            let keep = kind == "structured" || (accepted && rng.below(KEEP_ACCEPTED_ONE_IN) == 0);
            if keep {
                if pool.len() < MAX_POOL {
                    pool.push(input);
                } else if pool.len() > fixed {
                    let at = fixed + rng.below((pool.len() - fixed) as u64) as usize;
                    pool[at] = input;
                }
            }
        }
        eprintln!(
            "fuzz {}: seed {seed}, {:.1}s: {} corpus files, {} structured, {} mutated, {} accepted",
            self.target,
            started.elapsed().as_secs_f64(),
            stats.corpus,
            stats.structured,
            stats.mutated,
            stats.accepted,
        );
        stats
    }
}

/// Runs `f`; on a panic saves `input` and panics again naming the file, the kind of input and
/// the seed.
fn guarded<T>(target: &str, seed: u64, kind: &str, input: &[u8], f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(value) => value,
        Err(payload) => {
            let saved = save_crash(target, kind, input);
            let message = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("(non-text panic)");
            eprintln!(
                "fuzz {target}: {kind} panicked (seed {seed}); input saved to {saved}: {message}"
            );
            resume_unwind(payload)
        }
    }
}

fn save_crash(target: &str, kind: &str, input: &[u8]) -> String {
    let dir = crash_dir(target);
    // structured-generator inputs are `Unstructured` bytes, not inputs of the target's oracle
    let prefix = if kind == "structured generator" { "structured" } else { "crash" };
    let path = dir.join(format!("{prefix}-{:016x}", fnv1a(input)));
    match fs::create_dir_all(&dir).and_then(|()| fs::write(&path, input)) {
        Ok(()) => path.display().to_string(),
        Err(e) => format!("(not saved: {e}; {} bytes: {:02x?})", input.len(), input),
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3))
}

fn budget() -> Duration {
    let secs = match std::env::var(SECS_ENV) {
        Ok(text) => text
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .unwrap_or_else(|| panic!("{SECS_ENV}={text:?} is not a number of seconds")),
        Err(_) => DEFAULT_SECS,
    };
    Duration::from_secs_f64(secs)
}

fn seed(target: &str) -> u64 {
    match std::env::var(SEED_ENV) {
        Ok(text) => {
            text.trim().parse().unwrap_or_else(|_| panic!("{SEED_ENV}={text:?} is not a u64"))
        }
        Err(_) => {
            let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
            nanos as u64 ^ fnv1a(target.as_bytes())
        }
    }
}
