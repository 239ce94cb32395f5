//! One content-addressed artifact store, for memory templates
//! (`<cache>/templates/`) and package layers (`<cache>/packages/`).
//!
//! An entry is a dir `<root>/<key>/`: its data files and a JSON metadata
//! file ([`Metadata`]) recording its key, what it was built from, when and
//! how long, and what its files measure. It is built in a private staging
//! dir (`<root>/.staging/<pid>-<start>-<n>-<key>`, a [`Staging`], removed
//! when the build fails or is dropped) and renamed into place whole, so a
//! reader sees a complete entry or none; of two builds of one key that
//! race, both end with the winner's. Every use checks the entry first: a
//! damaged one is reported, never used.
//!
//! What differs between kinds (the key, the details the metadata records,
//! which files make an entry whole) is an [`Artifact`], implemented by the
//! kind's details type (`TemplateDetails`, `LayerDetails`).
//! [`ArtifactStore::entries`] lists every entry with its state,
//! [`ArtifactStore::prune_stale`] removes what is not current, never an
//! entry some process has a file of open or mapped (a VM restored from a
//! template, a VM attached to a layer) nor the build of a live process.
//!
//! Blocking file work: call it on the blocking pool.

use airlock_protocol::client::sha256_hex;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// Where entries are built before they are renamed into place.
pub const STAGING_DIR: &str = ".staging";
/// One byte appended per use of an entry: its size is the use count
/// (appends are atomic, so concurrent users need no lock).
pub const USES_FILE: &str = "uses";

/// Evictions of every store, one at a time in this process.
static EVICTING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// How recently looked-up entries eviction spares under `config`: a VM
/// that looked one up may still wait for a slot, another build and its
/// boot attempts before QEMU opens the files (then `/proc` shows it in
/// use).
pub fn eviction_spares(config: &crate::Config) -> Duration {
    config.queue_timeout
        + config.template_wait
        + config.boot_timeout * config.boot_attempts
        + Duration::from_secs(60)
}

/// A kind of artifact: what its metadata holds besides the key, the
/// inputs and the build's time ([`Metadata::details`]), and which files
/// make an entry whole.
pub trait Artifact: fmt::Debug + Clone + PartialEq + Eq + Serialize + DeserializeOwned {
    /// What an entry is built from: the same inputs give the same key.
    type Inputs: fmt::Debug + Clone + PartialEq + Eq + Serialize + DeserializeOwned;
    /// The metadata file's name in an entry dir.
    const METADATA_FILE: &'static str;
    /// The entry's data files (besides the metadata), synced when it is
    /// published.
    const DATA_FILES: &'static [&'static str];
    /// Whether a published entry's files are made read-only.
    const SEALED: bool;

    /// The key (dir name) of the entry built from `inputs`; a valid
    /// identifier.
    fn key_of(inputs: &Self::Inputs) -> String;

    /// Checks the data files in `dir` against `metadata`.
    ///
    /// # Errors
    /// Why the entry is damaged and must not be used.
    fn check_files(metadata: &Metadata<Self>, dir: &Path) -> Result<(), String>;
}

/// An entry's metadata file: what every kind records, and the kind's
/// own details (flattened into the same JSON object). It derefs to the
/// details.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Metadata<A: Artifact> {
    /// The key (the dir's name).
    pub key: String,
    /// What it was built from.
    pub inputs: A::Inputs,
    /// When it was built (seconds since the Unix epoch).
    pub created_unix: u64,
    /// How long the build took.
    pub build_ms: u64,
    /// What the kind records besides.
    #[serde(flatten)]
    pub details: A,
}

impl<A: Artifact> std::ops::Deref for Metadata<A> {
    type Target = A;

    fn deref(&self) -> &A {
        &self.details
    }
}

/// The short content address of `inputs`: 16 hex digits of the sha256 of
/// their JSON (a kind's key is a readable prefix and this).
pub fn digest_of(inputs: &impl Serialize) -> String {
    let canonical = serde_json::to_vec(inputs).unwrap_or_default();
    let mut digest = sha256_hex(&canonical);
    digest.truncate(16);
    digest
}

/// A checked entry, ready to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored<A: Artifact> {
    /// Its dir.
    pub dir: PathBuf,
    /// Its metadata.
    pub metadata: Metadata<A>,
}

/// What the store holds for some inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<T> {
    /// A complete entry matching the inputs.
    Ready(Box<T>),
    /// Nothing.
    Missing,
    /// Something that must not be used, and why.
    Damaged(String),
}

/// The state of a listed entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryState {
    /// Intact, and what this host would use.
    Current,
    /// Intact, but this host would build another (other images, QEMU,
    /// format): never used again.
    Stale,
    /// Must not be used, and why.
    Damaged(String),
    /// A staging dir: a build under way, or one a dead process left.
    HalfBuilt,
}

/// One entry of [`ArtifactStore::entries`].
#[derive(Debug, Clone)]
pub struct StoreEntry<A: Artifact> {
    /// The key (for a half-built entry, the key being built).
    pub key: String,
    /// Its dir.
    pub dir: PathBuf,
    /// Its metadata, or why it cannot be read.
    pub metadata: Result<Metadata<A>, String>,
    /// Disk space it takes (allocated blocks: files may be sparse).
    pub disk_bytes: u64,
    /// Time since it was built (`None` without readable metadata; for a
    /// half-built entry, since its staging dir last changed).
    pub age: Option<Duration>,
    /// How many times it was used (its uses are counted by
    /// [`ArtifactStore::record_use`]).
    pub uses: u64,
    /// Time since its last counted use.
    pub last_use: Option<Duration>,
    /// Current, stale, damaged or half-built.
    pub state: EntryState,
    /// Whether a process has one of its files open or mapped, or (for a
    /// half-built entry) its builder still runs: pruning leaves it.
    pub in_use: bool,
}

/// What [`ArtifactStore::prune_stale`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Keys of the published entries removed.
    pub removed: Vec<String>,
    /// Staging dirs of dead builds removed.
    pub half_built: Vec<PathBuf>,
    /// Keys of the entries that would have been removed but are in use.
    pub in_use: Vec<String>,
    /// Disk space freed.
    pub freed_bytes: u64,
}

/// A private dir for building one entry (0700), removed when dropped
/// unless published; obtained from [`ArtifactStore::staging`].
///
/// Dropped inside a tokio runtime, it is removed on the blocking pool.
#[derive(Debug)]
pub struct Staging {
    dir: PathBuf,
    key: String,
    armed: bool,
}

impl Staging {
    /// The dir to build in.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The key being built.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Removes the dir now (blocking).
    ///
    /// # Errors
    /// The failing removal (a missing dir is no error).
    pub fn discard(mut self) -> io::Result<()> {
        self.armed = false;
        remove_dir(&self.dir)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let dir = std::mem::take(&mut self.dir);
        let remove = move || {
            if let Err(e) = remove_dir(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a staging dir");
            }
        };
        match tokio::runtime::Handle::try_current() {
            // This may be an async worker thread: off it.
            Ok(runtime) => drop(runtime.spawn_blocking(remove)),
            Err(_) => remove(),
        }
    }
}

/// The entries of one kind under one root dir.
#[derive(Debug)]
pub struct ArtifactStore<A> {
    root: PathBuf,
    kind: PhantomData<fn() -> A>,
}

impl<A> Clone for ArtifactStore<A> {
    fn clone(&self) -> Self {
        Self {
            root: self.root.clone(),
            kind: PhantomData,
        }
    }
}

impl<A: Artifact> ArtifactStore<A> {
    /// The store at `root` (created when an entry is first built).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            kind: PhantomData,
        }
    }

    /// The root dir.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The dir of entry `key`.
    pub fn dir(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// Looks the entry of `inputs` up and checks it: its metadata, its
    /// inputs and its files.
    pub fn lookup(&self, inputs: &A::Inputs) -> Lookup<Stored<A>> {
        let key = A::key_of(inputs);
        let dir = self.dir(&key);
        if !dir.exists() {
            return Lookup::Missing;
        }
        match check(&dir, &key, Some(inputs)) {
            Ok(metadata) => Lookup::Ready(Box::new(Stored { dir, metadata })),
            Err(reason) => Lookup::Damaged(reason),
        }
    }

    /// A fresh, empty staging dir for building entry `key`, this build's
    /// own (`<pid>-<start>-<n>-<key>`: two builds of one key in one
    /// process get two dirs); the staging dirs of dead processes' builds
    /// are swept first.
    ///
    /// # Errors
    /// The failing file operation.
    pub fn staging(&self, key: &str) -> io::Result<Staging> {
        static BUILDS: AtomicU64 = AtomicU64::new(0);
        let build = BUILDS.fetch_add(1, Ordering::Relaxed);
        let dir = crate::process_dirs::fresh_staging_dir(
            &self.root.join(STAGING_DIR),
            &format!("{build}-{key}"),
        )?;
        Ok(Staging {
            dir,
            key: key.to_owned(),
            armed: true,
        })
    }

    /// Completes the entry of `inputs` built in `staging`: `describe`
    /// measures its files into the kind's details, and the metadata (with
    /// the time `build` took) is written; the files are synced (and sealed
    /// read-only for a sealed kind) and the dir renamed into place,
    /// replacing a damaged entry of the same key. When another build
    /// published the key meanwhile, theirs is kept and returned. The
    /// staging dir is gone afterwards, whatever happened.
    ///
    /// # Errors
    /// `describe`'s error, inputs of another key than `staging`'s
    /// ([`io::ErrorKind::InvalidInput`]), the failing file operation.
    pub fn publish_staged(
        &self,
        staging: Staging,
        inputs: &A::Inputs,
        build: Duration,
        describe: impl FnOnce(&Path) -> io::Result<A>,
    ) -> io::Result<Stored<A>> {
        let result = self.publish_inner(&staging, inputs, build, describe);
        // Renamed into place, or not wanted: either way no longer there.
        if let Err(e) = staging.discard() {
            tracing::warn!(error = %e, "cannot remove a staging dir");
        }
        result
    }

    fn publish_inner(
        &self,
        staging: &Staging,
        inputs: &A::Inputs,
        build: Duration,
        describe: impl FnOnce(&Path) -> io::Result<A>,
    ) -> io::Result<Stored<A>> {
        let key = A::key_of(inputs);
        if key != staging.key() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{key} cannot be published from the staging dir of {}",
                    staging.key()
                ),
            ));
        }
        let metadata = Metadata {
            key: key.clone(),
            inputs: inputs.clone(),
            details: describe(staging.path())?,
            created_unix: unix_now(),
            build_ms: crate::ms(build),
        };
        let json = serde_json::to_vec_pretty(&metadata).map_err(io::Error::other)?;
        std::fs::write(staging.path().join(A::METADATA_FILE), json)?;
        for file in A::DATA_FILES.iter().chain([&A::METADATA_FILE]) {
            let path = staging.path().join(file);
            if A::SEALED {
                std::fs::set_permissions(
                    &path,
                    std::os::unix::fs::PermissionsExt::from_mode(0o444),
                )?;
            }
            std::fs::File::open(&path)?.sync_all()?;
        }
        let dir = self.dir(&key);
        if dir.exists() {
            match check(&dir, &key, Some(inputs)) {
                // Someone else built it meanwhile: theirs is as good.
                Ok(theirs) => {
                    return Ok(Stored {
                        dir,
                        metadata: theirs,
                    })
                }
                Err(_) => remove_dir(&dir)?,
            }
        }
        if let Err(e) = std::fs::rename(staging.path(), &dir) {
            // Another build renamed its entry into place in between.
            return match check(&dir, &key, Some(inputs)) {
                Ok(theirs) => Ok(Stored {
                    dir,
                    metadata: theirs,
                }),
                Err(_) => Err(e),
            };
        }
        std::fs::File::open(&self.root)?.sync_all()?;
        Ok(Stored { dir, metadata })
    }

    /// Counts one more use of `stored`.
    ///
    /// # Errors
    /// The failing append.
    pub fn record_use(stored: &Stored<A>) -> io::Result<()> {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(stored.dir.join(USES_FILE))?
            .write_all(b".")
    }

    /// Marks `stored` as used now without counting a use: the last-use
    /// time that [`ArtifactStore::evict_to_budget`] orders by and spares
    /// recent entries by (a lookup touches what it returns, before its
    /// VM opens the files).
    ///
    /// # Errors
    /// The failing open or time update.
    pub fn touch(stored: &Stored<A>) -> io::Result<()> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(stored.dir.join(USES_FILE))?
            .set_modified(SystemTime::now())
    }

    /// Removes the entry of `key` (a damaged one, before a rebuild).
    ///
    /// # Errors
    /// The failing removal (a missing entry is no error).
    pub fn remove(&self, key: &str) -> io::Result<()> {
        remove_dir(&self.dir(key))
    }

    /// Every entry, published ones sorted by key and then half-built ones,
    /// each checked and judged: an intact entry is current when its key
    /// is that of its inputs and `current` accepts it, stale otherwise.
    pub fn entries(&self, current: impl Fn(&Metadata<A>) -> bool) -> Vec<StoreEntry<A>> {
        // Before this lists anything: its own reads open no file then.
        let busy = entries_in_use(&self.root);
        let mut entries: Vec<StoreEntry<A>> = entry_dirs(&self.root)
            .into_iter()
            .map(|(key, dir)| {
                let in_use = busy.contains(Path::new(&key));
                let checked = check::<A>(&dir, &key, None);
                let state = match &checked {
                    Err(reason) => EntryState::Damaged(reason.clone()),
                    Ok(m) if A::key_of(&m.inputs) == key && current(m) => EntryState::Current,
                    Ok(_) => EntryState::Stale,
                };
                let metadata = match checked {
                    Ok(m) => Ok(m),
                    Err(_) => read_metadata(&dir),
                };
                listed(key, dir, metadata, state, in_use)
            })
            .collect();
        let staging_root = self.root.join(STAGING_DIR);
        for (name, dir) in entry_dirs(&staging_root) {
            let building = crate::process_dirs::process_dir_owner_alive(&name).unwrap_or(false);
            let in_use = building || busy.contains(&Path::new(STAGING_DIR).join(&name));
            let key = staged_key(&name).to_owned();
            let metadata = read_metadata(&dir);
            let mut entry = listed(key, dir, metadata, EntryState::HalfBuilt, in_use);
            entry.age = modified_age(&entry.dir);
            entries.push(entry);
        }
        entries
    }

    /// The published entries, judged by the store alone: an intact one
    /// whose key is that of its inputs counts as current. Half-built ones
    /// are left out. [`ArtifactStore::entries`] takes a judge of what is
    /// current (such as `Templates::list`).
    pub fn list(&self) -> Vec<StoreEntry<A>> {
        let mut entries = self.entries(|_| true);
        entries.retain(|e| e.state != EntryState::HalfBuilt);
        entries
    }

    /// Removes every published entry `keep` refuses, and the half-built
    /// entries of dead builds, except those in use. Returns the keys
    /// removed.
    ///
    /// # Errors
    /// The first removal that failed.
    pub fn prune(&self, keep: impl Fn(&StoreEntry<A>) -> bool) -> io::Result<Vec<String>> {
        let entries = self.entries(|_| true);
        remove_unless(entries, |e| e.state != EntryState::HalfBuilt && keep(e))
            .map(|pruned| pruned.removed)
    }

    /// Removes the stale, damaged and half-built entries (judged as by
    /// [`ArtifactStore::entries`] with `current`), never one in use.
    ///
    /// # Errors
    /// The first removal that failed.
    pub fn prune_stale(&self, current: impl Fn(&Metadata<A>) -> bool) -> io::Result<Pruned> {
        let entries = self.entries(current);
        remove_unless(entries, |e| e.state == EntryState::Current)
    }

    /// Disk space the store takes: every entry, half-built ones included
    /// (allocated blocks).
    pub fn usage(&self) -> u64 {
        allocated_bytes(&self.root)
    }

    /// Brings the store under `budget` bytes (allocated) by removing
    /// published entries, the least recently used first (never used: by
    /// age), and never one that is in use (a file open or mapped by a
    /// process, see [`StoreEntry::in_use`]), that `protect` names (the
    /// entry the caller is about to use) or that was used or built less
    /// than `recent` ago (a lookup records a use before its VM opens the
    /// files). Half-built entries count against the budget but are left
    /// to [`ArtifactStore::prune_stale`]. When what is left still exceeds
    /// the budget, it says so in the log and in [`Evicted::over_by`].
    ///
    /// # Errors
    /// The first removal that failed.
    pub fn evict_to_budget(
        &self,
        budget: u64,
        recent: Duration,
        protect: impl Fn(&str) -> bool,
    ) -> io::Result<Evicted> {
        // One eviction at a time in this process: two builds ending
        // together would each remove what the store is over by.
        let _one = EVICTING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entries = self.entries(|_| true);
        let mut used: u64 = entries.iter().map(|e| e.disk_bytes).sum();
        let mut evicted = Evicted::default();
        if used <= budget {
            return Ok(evicted);
        }
        let mut candidates: Vec<StoreEntry<A>> = entries
            .into_iter()
            .filter(|e| e.state != EntryState::HalfBuilt)
            .collect();
        // Longest unused first: the time since the last use, else since
        // the build (an unreadable entry has neither and goes first).
        candidates.sort_by_key(|e| std::cmp::Reverse(idle_for(e).unwrap_or(Duration::MAX)));
        for entry in candidates {
            if used <= budget {
                break;
            }
            // Read again now: a lookup may have touched it since the list.
            let used_since = modified_age(&entry.dir.join(USES_FILE));
            let recently = used_since.or(entry.age).is_some_and(|idle| idle < recent);
            if entry.in_use || protect(&entry.key) || recently {
                evicted.kept.push(entry.key);
                continue;
            }
            remove_dir(&entry.dir)?;
            used = used.saturating_sub(entry.disk_bytes);
            evicted.freed_bytes += entry.disk_bytes;
            tracing::info!(
                key = entry.key,
                bytes = entry.disk_bytes,
                budget,
                "evicted: least recently used, over the store's budget"
            );
            evicted.removed.push(entry.key);
        }
        evicted.over_by = used.saturating_sub(budget);
        if evicted.over_by > 0 {
            tracing::warn!(
                root = %self.root.display(),
                used,
                budget,
                kept = ?evicted.kept,
                "over its budget: what is left is in use or was just used"
            );
        }
        Ok(evicted)
    }
}

/// What [`ArtifactStore::evict_to_budget`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evicted {
    /// Keys of the entries removed, least recently used first.
    pub removed: Vec<String>,
    /// Keys of entries that would have gone but are in use, protected or
    /// just used.
    pub kept: Vec<String>,
    /// Disk space freed.
    pub freed_bytes: u64,
    /// How far the store is still over its budget (0: within it).
    pub over_by: u64,
}

/// How long an entry has gone unused: since its last use, else since it
/// was built; `None` when neither is known.
fn idle_for<A: Artifact>(entry: &StoreEntry<A>) -> Option<Duration> {
    entry.last_use.or(entry.age)
}

/// Removes every entry of `entries` that `keep` refuses and no process
/// uses.
fn remove_unless<A: Artifact>(
    entries: Vec<StoreEntry<A>>,
    keep: impl Fn(&StoreEntry<A>) -> bool,
) -> io::Result<Pruned> {
    let mut pruned = Pruned::default();
    for entry in entries {
        if keep(&entry) {
            continue;
        }
        if entry.in_use {
            if entry.state != EntryState::HalfBuilt {
                tracing::info!(key = entry.key, "in use: not pruned");
                pruned.in_use.push(entry.key);
            }
            continue;
        }
        remove_dir(&entry.dir)?;
        pruned.freed_bytes += entry.disk_bytes;
        if entry.state == EntryState::HalfBuilt {
            tracing::info!(dir = %entry.dir.display(), "removed the staging dir of a dead build");
            pruned.half_built.push(entry.dir);
        } else {
            pruned.removed.push(entry.key);
        }
    }
    Ok(pruned)
}

/// A listed entry: its sizes, age and uses read from `dir`.
fn listed<A: Artifact>(
    key: String,
    dir: PathBuf,
    metadata: Result<Metadata<A>, String>,
    state: EntryState,
    in_use: bool,
) -> StoreEntry<A> {
    let uses = std::fs::metadata(dir.join(USES_FILE)).ok();
    StoreEntry {
        key,
        disk_bytes: allocated_bytes(&dir),
        age: metadata
            .as_ref()
            .ok()
            .and_then(|m| age_since(m.created_unix)),
        uses: uses.as_ref().map_or(0, std::fs::Metadata::len),
        last_use: modified_age(&dir.join(USES_FILE)),
        dir,
        metadata,
        state,
        in_use,
    }
}

/// Checks the entry dir `dir` named `key` (against `inputs` when given);
/// its metadata, or the reason it must not be used.
fn check<A: Artifact>(
    dir: &Path,
    key: &str,
    inputs: Option<&A::Inputs>,
) -> Result<Metadata<A>, String> {
    let metadata: Metadata<A> = read_metadata(dir)?;
    if metadata.key != key || inputs.is_some_and(|inputs| &metadata.inputs != inputs) {
        return Err(format!(
            "it was built from other inputs (key {})",
            metadata.key
        ));
    }
    A::check_files(&metadata, dir)?;
    Ok(metadata)
}

fn read_metadata<A: Artifact>(dir: &Path) -> Result<Metadata<A>, String> {
    let path = dir.join(A::METADATA_FILE);
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// The size of the file at `path`, or why it cannot be read (for
/// [`Artifact::check_files`]).
///
/// # Errors
/// The path and the failure, as a message.
pub fn file_len(path: &Path) -> Result<u64, String> {
    std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The contents of the file at `path`, or why it cannot be read (for
/// [`Artifact::check_files`]).
///
/// # Errors
/// The path and the failure, as a message.
pub fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Now, in seconds since the Unix epoch (a metadata's `created_unix`).
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Removes a dir and what it holds; a missing one is no error. Read-only
/// files do not stop it (their dir is writable); a process that has a
/// file open keeps it until it closes it.
fn remove_dir(dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The visible subdirs of `root` (not `.staging`), as (name, path),
/// sorted by name.
fn entry_dirs(root: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut dirs: Vec<(String, PathBuf)> = entries
        .flatten()
        .filter(|e| e.path().is_dir() && !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    dirs.sort();
    dirs
}

/// Time since `created_unix` (seconds since the epoch); `None` if later
/// than now.
fn age_since(created_unix: u64) -> Option<Duration> {
    (SystemTime::UNIX_EPOCH + Duration::from_secs(created_unix))
        .elapsed()
        .ok()
}

/// Time since `path` last changed; `None` when it is missing.
fn modified_age(path: &Path) -> Option<Duration> {
    std::fs::metadata(path)
        .ok()?
        .modified()
        .ok()?
        .elapsed()
        .ok()
}

/// Allocated bytes of the files under `path` (not their apparent size:
/// a sparse file takes only what was written), subdirs included.
fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => allocated_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.blocks() * 512),
            _ => 0,
        })
        .sum()
}

/// The key a staging dir's name (`<pid>-<start>-<n>-<key>`, or the
/// older `<pid>-<start>-<key>`) builds (pure; keys start with a letter).
fn staged_key(name: &str) -> &str {
    let Some(rest) = name.splitn(3, '-').nth(2) else {
        return name;
    };
    match rest.split_once('-') {
        Some((build, key)) if build.bytes().all(|b| b.is_ascii_digit()) => key,
        _ => rest,
    }
}

/// The entries under `root` (relative: `<key>`, or `.staging/<name>`) of
/// which some process has a file open or mapped, as `/proc` shows them
/// (the processes of other users are not visible, and cannot use the
/// store's 0700 dirs anyway).
fn entries_in_use(root: &Path) -> BTreeSet<PathBuf> {
    let mut busy = BTreeSet::new();
    let (Ok(root), Ok(processes)) = (root.canonicalize(), std::fs::read_dir("/proc")) else {
        return busy;
    };
    let processes = processes.flatten().filter(|p| {
        p.file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
    });
    for process in processes {
        if let Ok(fds) = std::fs::read_dir(process.path().join("fd")) {
            for fd in fds.flatten() {
                if let Ok(target) = std::fs::read_link(fd.path()) {
                    busy.extend(entry_of(&root, &target));
                }
            }
        }
        if let Ok(maps) = std::fs::read_to_string(process.path().join("maps")) {
            for path in maps.lines().filter_map(mapped_path) {
                busy.extend(entry_of(&root, Path::new(path)));
            }
        }
    }
    busy
}

/// The entry under `root` that `path` lies in, relative to `root`:
/// `<key>` or `.staging/<name>` (pure).
fn entry_of(root: &Path, path: &Path) -> Option<PathBuf> {
    let mut parts = path.strip_prefix(root).ok()?.components();
    let first = parts.next()?.as_os_str();
    if first == STAGING_DIR {
        Some(Path::new(first).join(parts.next()?))
    } else {
        Some(PathBuf::from(first))
    }
}

/// The file a line of `/proc/<pid>/maps` maps (`None`: anonymous, a
/// pseudo-file such as `[heap]`, or a deleted file), pure.
fn mapped_path(line: &str) -> Option<&str> {
    // address perms offset dev inode path: only the path has a '/'.
    let path = &line[line.find('/')?..];
    (!path.ends_with(" (deleted)")).then_some(path)
}

/// Test support for the kinds' own tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::Lookup;
    use std::path::Path;

    /// Why `lookup` found a damaged entry; panics when it did not.
    pub(crate) fn damage<T: std::fmt::Debug>(lookup: Lookup<T>) -> String {
        match lookup {
            Lookup::Damaged(reason) => reason,
            other => panic!("not found damaged: {other:?}"),
        }
    }

    /// Checks that the metadata file at `path` has the top-level fields of
    /// `older` (metadata in the layout an earlier version wrote), then
    /// replaces it by `older`.
    pub(crate) fn rewrite_in_older_layout(path: &Path, older: &serde_json::Value) {
        let written: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        let fields =
            |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(fields(&written), fields(older));
        // A sealed file is read-only, its dir is not.
        std::fs::remove_file(path).unwrap();
        std::fs::write(path, serde_json::to_vec_pretty(older).unwrap()).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::sync::{Arc, Barrier};

    /// A kind for the tests: one data file of a recorded size.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    struct Blob {
        bytes: u64,
    }

    impl Artifact for Blob {
        type Inputs = String;
        const METADATA_FILE: &'static str = "blob.json";
        const DATA_FILES: &'static [&'static str] = &["data"];
        const SEALED: bool = false;

        fn key_of(inputs: &String) -> String {
            format!("blob-{inputs}")
        }

        fn check_files(metadata: &Metadata<Self>, dir: &Path) -> Result<(), String> {
            let bytes = file_len(&dir.join("data"))?;
            if bytes == metadata.bytes {
                Ok(())
            } else {
                Err(format!("data has {bytes} bytes, not {}", metadata.bytes))
            }
        }
    }

    type Store = ArtifactStore<Blob>;

    /// An empty store in a temp dir (removed when the dir is dropped).
    fn fresh() -> (tempfile::TempDir, Store) {
        let root = tempfile::tempdir().unwrap();
        let store = Store::new(root.path());
        (root, store)
    }

    fn describe(dir: &Path) -> io::Result<Blob> {
        Ok(Blob {
            bytes: std::fs::metadata(dir.join("data"))?.len(),
        })
    }

    /// Publishes `staging` as the entry of `inputs`.
    fn publish_as(store: &Store, staging: Staging, inputs: &str) -> io::Result<Stored<Blob>> {
        store.publish_staged(staging, &inputs.to_owned(), Duration::ZERO, describe)
    }

    /// Stages `data` for `inputs` and publishes it.
    fn publish(store: &Store, inputs: &str, data: &[u8]) -> io::Result<Stored<Blob>> {
        let staging = store.staging(&Blob::key_of(&inputs.to_owned()))?;
        std::fs::write(staging.path().join("data"), data)?;
        publish_as(store, staging, inputs)
    }

    fn staging_dirs(store: &Store) -> Vec<(String, PathBuf)> {
        entry_dirs(&store.root().join(STAGING_DIR))
    }

    /// Bytes that no file system compresses away.
    fn noise(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7919 % 251) as u8).collect()
    }

    /// Sets the time of `stored`'s last use `ago` in the past.
    fn used_ago(stored: &Stored<Blob>, ago: Duration) {
        Store::record_use(stored).unwrap();
        let when = SystemTime::now() - ago;
        std::fs::File::options()
            .write(true)
            .open(stored.dir.join(USES_FILE))
            .unwrap()
            .set_modified(when)
            .unwrap();
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn eviction_removes_the_least_recently_used_entries_until_the_store_fits() {
        let (_root, store) = fresh();
        let old = publish(&store, "old", &noise(64 * 1024)).unwrap();
        let mid = publish(&store, "mid", &noise(64 * 1024)).unwrap();
        let new = publish(&store, "new", &noise(64 * 1024)).unwrap();
        used_ago(&old, 3 * HOUR);
        used_ago(&mid, 2 * HOUR);
        used_ago(&new, HOUR);
        let total = store.usage();
        let one = total / 3;
        let evicted = store
            .evict_to_budget(total - one / 2, Duration::from_secs(60), |_| false)
            .unwrap();
        assert_eq!(evicted.removed, ["blob-old"]);
        assert_eq!(evicted.over_by, 0);
        assert!(evicted.freed_bytes >= 64 * 1024, "{evicted:?}");
        assert_eq!(store.lookup(&"old".into()), Lookup::Missing);
        assert!(matches!(store.lookup(&"mid".into()), Lookup::Ready(_)));
        // A store within its budget is left alone.
        let again = store.evict_to_budget(total, HOUR, |_| false).unwrap();
        assert_eq!(again, Evicted::default());
    }

    #[test]
    fn eviction_never_removes_a_protected_recent_or_open_entry() {
        let (_root, store) = fresh();
        let open = publish(&store, "open", &noise(64 * 1024)).unwrap();
        let guarded = publish(&store, "guarded", &noise(64 * 1024)).unwrap();
        let recent = publish(&store, "recent", &noise(64 * 1024)).unwrap();
        let idle = publish(&store, "idle", &noise(64 * 1024)).unwrap();
        used_ago(&open, 9 * HOUR);
        used_ago(&guarded, 8 * HOUR);
        used_ago(&recent, Duration::from_secs(5));
        used_ago(&idle, HOUR);
        // This process holds a data file of `open` open: in use.
        let _held = std::fs::File::open(open.dir.join("data")).unwrap();
        let evicted = store
            .evict_to_budget(0, Duration::from_secs(60), |key| key == "blob-guarded")
            .unwrap();
        assert_eq!(evicted.removed, ["blob-idle"]);
        assert_eq!(evicted.kept, ["blob-open", "blob-guarded", "blob-recent"]);
        assert!(evicted.over_by > 0);
        for kept in ["open", "guarded", "recent"] {
            assert!(
                matches!(store.lookup(&kept.into()), Lookup::Ready(_)),
                "{kept}"
            );
        }
    }

    #[test]
    fn a_touch_marks_an_entry_just_used_without_counting_a_use() {
        let (_root, store) = fresh();
        let a = publish(&store, "a", &noise(32 * 1024)).unwrap();
        used_ago(&a, HOUR);
        Store::touch(&a).unwrap();
        let [listed] = &store.list()[..] else {
            panic!("one entry");
        };
        assert_eq!(listed.uses, 1);
        assert!(listed.last_use.unwrap() < Duration::from_secs(60));
        let evicted = store
            .evict_to_budget(0, Duration::from_secs(60), |_| false)
            .unwrap();
        assert_eq!(evicted.kept, ["blob-a"]);
    }

    #[test]
    fn an_entry_never_used_is_evicted_by_its_age() {
        let (_root, store) = fresh();
        publish(&store, "a", &noise(32 * 1024)).unwrap();
        let b = publish(&store, "b", &noise(32 * 1024)).unwrap();
        used_ago(&b, HOUR);
        // `a` was built just now and never used: too recent to go; `b`
        // went unused for an hour.
        let evicted = store
            .evict_to_budget(0, Duration::from_secs(60), |_| false)
            .unwrap();
        assert_eq!(evicted.removed, ["blob-b"]);
        assert_eq!(evicted.kept, ["blob-a"]);
    }

    #[test]
    fn a_published_entry_is_found_ready_and_its_staging_dir_is_gone() {
        let (root, store) = fresh();
        assert_eq!(store.lookup(&"a".into()), Lookup::Missing);
        let stored = publish(&store, "a", b"hello").unwrap();
        assert_eq!(stored.dir, root.path().join("blob-a"));
        assert_eq!(stored.metadata.bytes, 5);
        assert_eq!(store.lookup(&"a".into()), Lookup::Ready(Box::new(stored)));
        assert!(staging_dirs(&store).is_empty());
    }

    #[test]
    fn an_entry_whose_file_changed_is_damaged_and_a_new_publish_replaces_it() {
        let (_root, store) = fresh();
        let stored = publish(&store, "a", b"hello").unwrap();
        std::fs::write(stored.dir.join("data"), b"hi").unwrap();
        let reason = testing::damage(store.lookup(&"a".into()));
        assert!(reason.contains("2 bytes"), "{reason}");
        publish(&store, "a", b"hello again").unwrap();
        let Lookup::Ready(stored) = store.lookup(&"a".into()) else {
            panic!("the damaged entry was not replaced");
        };
        assert_eq!(stored.metadata.bytes, 11);
    }

    #[test]
    fn unreadable_metadata_or_metadata_of_other_inputs_is_damaged() {
        let (_root, store) = fresh();
        let stored = publish(&store, "a", b"hello").unwrap();
        let mut other = stored.metadata.clone();
        other.inputs = "b".into();
        std::fs::write(
            stored.dir.join(Blob::METADATA_FILE),
            serde_json::to_vec(&other).unwrap(),
        )
        .unwrap();
        let reason = testing::damage(store.lookup(&"a".into()));
        assert!(reason.contains("other inputs"), "{reason}");
        std::fs::write(stored.dir.join(Blob::METADATA_FILE), b"{").unwrap();
        let reason = testing::damage(store.lookup(&"a".into()));
        assert!(reason.contains("blob.json"), "{reason}");
    }

    #[test]
    fn of_two_publishes_of_one_key_the_second_keeps_the_first() {
        let (_root, store) = fresh();
        let first = store.staging("blob-a").unwrap();
        let second = store.staging("blob-a").unwrap();
        std::fs::write(first.path().join("data"), b"first").unwrap();
        std::fs::write(second.path().join("data"), b"second").unwrap();
        let second_dir = second.path().to_path_buf();
        let winner = publish_as(&store, first, "a").unwrap();
        let loser = publish_as(&store, second, "a").unwrap();
        assert_eq!(loser, winner);
        assert_eq!(std::fs::read(winner.dir.join("data")).unwrap(), b"first");
        assert!(!second_dir.exists());
    }

    #[test]
    fn racing_publishes_of_one_key_all_end_with_the_one_winner() {
        let (_root, store) = fresh();
        let racers = 8;
        let start = Arc::new(Barrier::new(racers));
        let results: Vec<Stored<Blob>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..racers)
                .map(|i| {
                    let (store, start) = (store.clone(), Arc::clone(&start));
                    scope.spawn(move || {
                        let staging = store.staging("blob-a").unwrap();
                        std::fs::write(staging.path().join("data"), vec![b'x'; 10 + i]).unwrap();
                        start.wait();
                        publish_as(&store, staging, "a").unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(results.iter().all(|r| r == &results[0]), "{results:?}");
        let Lookup::Ready(stored) = store.lookup(&"a".into()) else {
            panic!("no winner was left in place");
        };
        assert_eq!(*stored, results[0]);
        assert!(staging_dirs(&store).is_empty(), "a loser's dir was left");
    }

    #[test]
    fn two_builds_of_one_key_in_one_process_stage_apart() {
        let (_root, store) = fresh();
        let first = store.staging("blob-a").unwrap();
        std::fs::write(first.path().join("data"), b"first").unwrap();
        let second = store.staging("blob-a").unwrap();
        assert_ne!(first.path(), second.path());
        drop(second);
        assert_eq!(std::fs::read(first.path().join("data")).unwrap(), b"first");
        let listed = store.entries(|_| true);
        assert_eq!(listed.len(), 1);
        assert_eq!(
            (listed[0].key.as_str(), &listed[0].state),
            ("blob-a", &EntryState::HalfBuilt)
        );
    }

    #[test]
    fn a_failed_publish_removes_its_staging_dir() {
        let (_root, store) = fresh();
        let staging = store.staging("blob-a").unwrap();
        let dir = staging.path().to_path_buf();
        // No data file: describing it fails.
        let err = publish_as(&store, staging, "a").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(!dir.exists());
        assert_eq!(store.lookup(&"a".into()), Lookup::Missing);
    }

    #[test]
    fn metadata_of_another_key_is_not_published_from_a_staging_dir() {
        let (_root, store) = fresh();
        let staging = store.staging("blob-a").unwrap();
        std::fs::write(staging.path().join("data"), b"x").unwrap();
        let err = publish_as(&store, staging, "b").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
        assert_eq!(store.lookup(&"b".into()), Lookup::Missing);
        assert!(staging_dirs(&store).is_empty());
    }

    #[test]
    fn a_dropped_staging_dir_is_removed() {
        let (_root, store) = fresh();
        let staging = store.staging("blob-a").unwrap();
        std::fs::write(staging.path().join("data"), b"half").unwrap();
        let dir = staging.path().to_path_buf();
        drop(staging);
        assert!(!dir.exists());
    }

    #[tokio::test]
    async fn a_staging_dir_dropped_on_the_runtime_is_removed_off_it() {
        let (_root, store) = fresh();
        let staging = store.staging("blob-a").unwrap();
        let dir = staging.path().to_path_buf();
        drop(staging);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while dir.exists() {
            assert!(tokio::time::Instant::now() < deadline, "not removed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[test]
    fn entries_tell_current_stale_damaged_and_half_built_apart() {
        let (root, store) = fresh();
        publish(&store, "current", b"1").unwrap();
        publish(&store, "stale", b"2").unwrap();
        let damaged = publish(&store, "damaged", b"3").unwrap();
        std::fs::remove_file(damaged.dir.join("data")).unwrap();
        let building = store.staging("blob-building").unwrap();
        let dead = root.path().join(STAGING_DIR).join("999999999-1-blob-dead");
        std::fs::create_dir_all(&dead).unwrap();
        let entries = store.entries(|m| m.inputs != "stale");
        let states: Vec<(&str, &EntryState, bool)> = entries
            .iter()
            .map(|e| (e.key.as_str(), &e.state, e.in_use))
            .collect();
        let Some(EntryState::Damaged(reason)) = entries
            .iter()
            .find(|e| e.key == "blob-damaged")
            .map(|e| &e.state)
        else {
            panic!("{states:?}");
        };
        assert!(reason.contains("data"), "{reason}");
        let damaged = EntryState::Damaged(reason.clone());
        assert_eq!(
            states,
            [
                ("blob-current", &EntryState::Current, false),
                ("blob-damaged", &damaged, false),
                ("blob-stale", &EntryState::Stale, false),
                // Staging dirs sort by pid: this process's is below 999999999.
                ("blob-building", &EntryState::HalfBuilt, true),
                ("blob-dead", &EntryState::HalfBuilt, false),
            ]
        );
        assert!(entries[0].age.is_some() && entries[0].metadata.is_ok());
        assert_eq!(store.list().len(), 3, "list leaves half-built ones out");
        drop(building);
    }

    #[test]
    fn an_entry_whose_key_is_not_that_of_its_inputs_is_never_current() {
        let (root, store) = fresh();
        let stored = publish(&store, "a", b"1").unwrap();
        let renamed = root.path().join("blob-old-format");
        std::fs::rename(&stored.dir, &renamed).unwrap();
        let mut metadata = stored.metadata;
        metadata.key = "blob-old-format".into();
        std::fs::write(
            renamed.join(Blob::METADATA_FILE),
            serde_json::to_vec(&metadata).unwrap(),
        )
        .unwrap();
        let entries = store.entries(|_| true);
        assert_eq!(entries[0].state, EntryState::Stale);
    }

    #[test]
    fn prune_removes_stale_damaged_and_dead_builds_and_keeps_current_ones() {
        let (root, store) = fresh();
        publish(&store, "current", b"1").unwrap();
        publish(&store, "stale", b"2").unwrap();
        std::fs::create_dir(root.path().join("blob-damaged")).unwrap();
        let building = store.staging("blob-building").unwrap();
        let dead = root.path().join(STAGING_DIR).join("999999999-1-blob-dead");
        std::fs::create_dir_all(&dead).unwrap();
        std::fs::write(dead.join("data"), noise(4096)).unwrap();
        let pruned = store.prune_stale(|m| m.inputs == "current").unwrap();
        assert_eq!(pruned.removed, ["blob-damaged", "blob-stale"]);
        assert_eq!(pruned.half_built, std::slice::from_ref(&dead));
        assert!(pruned.in_use.is_empty());
        assert!(pruned.freed_bytes >= 4096, "{pruned:?}");
        assert!(matches!(store.lookup(&"current".into()), Lookup::Ready(_)));
        assert!(building.path().exists(), "a live build is left alone");
        assert!(!dead.exists());
    }

    #[test]
    fn prune_never_removes_an_entry_a_process_has_open() {
        let (_root, store) = fresh();
        let ours = publish(&store, "ours", b"1").unwrap();
        let theirs = publish(&store, "theirs", b"2").unwrap();
        // This process holds one open; a child process the other.
        let open = std::fs::File::open(ours.dir.join("data")).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .stdin(std::fs::File::open(theirs.dir.join("data")).unwrap())
            .spawn()
            .unwrap();
        let in_use: Vec<bool> = store.entries(|_| false).iter().map(|e| e.in_use).collect();
        assert_eq!(in_use, [true, true]);
        let pruned = store.prune_stale(|_| false).unwrap();
        assert!(pruned.removed.is_empty(), "{pruned:?}");
        assert_eq!(pruned.in_use, ["blob-ours", "blob-theirs"]);
        assert!(ours.dir.exists() && theirs.dir.exists());
        assert!(store.prune(|_| false).unwrap().is_empty());
        child.kill().unwrap();
        child.wait().unwrap();
        drop(open);
        let pruned = store.prune_stale(|_| false).unwrap();
        assert_eq!(pruned.removed, ["blob-ours", "blob-theirs"]);
    }

    #[test]
    fn usage_sums_every_entry_half_built_ones_included() {
        let (_root, store) = fresh();
        assert_eq!(store.usage(), 0);
        publish(&store, "a", &noise(8192)).unwrap();
        publish(&store, "b", &noise(4096)).unwrap();
        let building = store.staging("blob-c").unwrap();
        std::fs::write(building.path().join("data"), noise(4096)).unwrap();
        // A sparse file counts what is written, not its length.
        let sparse = std::fs::File::create(building.path().join("sparse")).unwrap();
        sparse.set_len(64 << 20).unwrap();
        let entries = store.entries(|_| true);
        let listed: u64 = entries.iter().map(|e| e.disk_bytes).sum();
        assert_eq!(store.usage(), listed);
        assert!(listed >= 8192 + 4096 + 4096, "{listed}");
        assert!(listed < 1 << 20, "the sparse file counted whole: {listed}");
    }

    #[test]
    fn uses_are_counted_and_dated() {
        let (_root, store) = fresh();
        let stored = publish(&store, "a", b"1").unwrap();
        assert_eq!(store.list()[0].uses, 0);
        assert_eq!(store.list()[0].last_use, None);
        Store::record_use(&stored).unwrap();
        Store::record_use(&stored).unwrap();
        let listed = &store.list()[0];
        assert_eq!(listed.uses, 2);
        assert!(listed.last_use.is_some());
        assert!(matches!(store.lookup(&"a".into()), Lookup::Ready(_)));
    }

    #[test]
    fn removing_a_missing_entry_is_no_error() {
        let (_root, store) = fresh();
        store.remove("blob-none").unwrap();
        let stored = publish(&store, "a", b"1").unwrap();
        store.remove("blob-a").unwrap();
        assert!(!stored.dir.exists());
    }

    #[test]
    fn a_staging_dir_names_the_key_it_builds() {
        assert_eq!(
            staged_key("12-345-6-python-512m-1c-ab12"),
            "python-512m-1c-ab12"
        );
        assert_eq!(staged_key("12-345-python-pkgs-ab12"), "python-pkgs-ab12");
        assert_eq!(staged_key("odd"), "odd");
    }

    #[test]
    fn open_files_are_traced_to_their_entry() {
        let root = Path::new("/cache/templates");
        let of = |p: &str| entry_of(root, Path::new(p));
        assert_eq!(of("/cache/templates/k1/memory"), Some("k1".into()));
        assert_eq!(of("/cache/templates/k1"), Some("k1".into()));
        assert_eq!(
            of("/cache/templates/.staging/1-2-k1/state"),
            Some(".staging/1-2-k1".into())
        );
        assert_eq!(of("/cache/templates/.staging"), None);
        assert_eq!(of("/cache/templates"), None);
        assert_eq!(of("/cache/packages/k1/layer.img"), None);
    }

    #[test]
    fn mapped_paths_are_read_from_proc_maps_lines() {
        let line = "7f1c2a000000-7f1c6a000000 rw-p 00000000 fd:01 1234   /cache/t/k 1/memory";
        assert_eq!(mapped_path(line), Some("/cache/t/k 1/memory"));
        assert_eq!(
            mapped_path("7f1c2a000000-7f1c6a000000 rw-p 00000000 00:00 0 "),
            None
        );
        assert_eq!(
            mapped_path("55d0c0000000-55d0c0021000 rw-p 00000000 00:00 0   [heap]"),
            None
        );
        assert_eq!(
            mapped_path(
                "7f1c2a000000-7f1c6a000000 r--p 00000000 fd:01 9 /cache/t/k/memory (deleted)"
            ),
            None
        );
    }
}
