//! E2B's sandboxes: each one an Airlock server session (same id, same
//! tenant, same quota place) plus what E2B says of it: its template,
//! metadata, env vars, end time and the tokens of its sandbox planes.
//!
//! A sandbox ends at its end time as E2B's do: a timer task per sandbox
//! sleeps until then (a later `set_timeout` wakes it to sleep again) and
//! closes the session. The task holds only a weak reference to the
//! sandbox, and the sandbox aborts its task when dropped, so the table
//! owns both.

use crate::keys::Caller;
use crate::service::Airlock;
use airlock::Session;
use rand::RngCore;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, SystemTime};
use tokio::task::JoinHandle;

/// One E2B sandbox.
pub(crate) struct Sandbox {
    /// The sandbox id: its session's id.
    pub id: String,
    /// Who made it: every sandbox-plane request acts for this caller.
    pub caller: Caller,
    /// The template id create named.
    pub template_id: String,
    /// The image it maps to (E2B's `alias` is the template id).
    pub image: airlock::spec::Image,
    /// Create's `metadata`.
    pub metadata: BTreeMap<String, String>,
    /// Create's `envVars`: every command and cell gets them.
    pub env_vars: BTreeMap<String, String>,
    /// Guest memory and vCPUs (what `get_info` reports).
    pub memory_mib: u32,
    /// vCPUs.
    pub vcpus: u32,
    /// When it started.
    pub started_at: SystemTime,
    /// Create's `autoPause`: at its end it is paused, not killed.
    pub auto_pause: bool,
    /// When it ends (create's timeout, moved by `set_timeout`).
    end_at: Mutex<SystemTime>,
    /// The envd token (`envdAccessToken`, sent as `X-Access-Token`).
    pub access_token: String,
    /// The code interpreter's token (`trafficAccessToken`, sent as
    /// `E2B-Traffic-Access-Token`, also on `/contexts`, which carry no
    /// `X-Access-Token`).
    pub traffic_token: String,
    /// Cells run so far (`number_of_executions`).
    pub executions: std::sync::atomic::AtomicU64,
    /// The session.
    pub session: Arc<Session>,
    /// The code contexts made beside the image's own language's.
    contexts: Mutex<Vec<airlock_protocol::Language>>,
    /// Its envd processes, each running beside the session's other calls.
    pub processes: Arc<super::processes::Processes>,
    /// Wakes the timer when the end time moves (its own `Arc`: the timer
    /// waits on it without holding the sandbox).
    moved: Arc<tokio::sync::Notify>,
    /// The timer task (aborted with the sandbox).
    timer: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("id", &self.id)
            .field("tenant", &self.caller.tenant)
            .field("template_id", &self.template_id)
            .finish_non_exhaustive()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(timer) = lock(&self.timer).take() {
            timer.abort();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What [`Sandboxes::insert`] is given besides the session.
pub(crate) struct NewSandbox {
    /// The caller.
    pub caller: Caller,
    /// The template id.
    pub template_id: String,
    /// Its image.
    pub image: airlock::spec::Image,
    /// `metadata`.
    pub metadata: BTreeMap<String, String>,
    /// `envVars`.
    pub env_vars: BTreeMap<String, String>,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// vCPUs.
    pub vcpus: u32,
    /// The timeout from now.
    pub timeout: Duration,
    /// Create's `autoPause`: at its end it is paused, not killed.
    pub auto_pause: bool,
}

impl Sandbox {
    /// The code contexts made beside the default one.
    pub fn contexts(&self) -> Vec<airlock_protocol::Language> {
        lock(&self.contexts).clone()
    }

    /// Records a context of `language`.
    pub fn add_context(&self, language: airlock_protocol::Language) {
        let mut contexts = lock(&self.contexts);
        if !contexts.contains(&language) {
            contexts.push(language);
        }
    }

    /// Forgets the context of `language` made beside the default one;
    /// whether there was one.
    pub fn remove_context(&self, language: airlock_protocol::Language) -> bool {
        let mut contexts = lock(&self.contexts);
        let before = contexts.len();
        contexts.retain(|made| *made != language);
        contexts.len() != before
    }

    /// When it ends.
    pub fn end_at(&self) -> SystemTime {
        *lock(&self.end_at)
    }

    /// Moves its end to `timeout` from now (E2B's `set_timeout`).
    pub fn set_timeout(&self, timeout: Duration) {
        *lock(&self.end_at) = SystemTime::now() + timeout;
        self.moved.notify_one();
    }

    /// Whether it still runs (its session is open).
    pub fn is_live(&self) -> bool {
        !self.session.is_closed()
    }
}

/// A new random token: `prefix` and 16 random bytes in hex.
pub(crate) fn new_token(prefix: &str) -> String {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{prefix}{}", hex::encode(bytes))
}

/// Whether `given` is `expected`, in time independent of where they
/// differ.
pub(crate) fn token_matches(given: &str, expected: &str) -> bool {
    let (a, b) = (given.as_bytes(), expected.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What E2B says of a paused sandbox, kept to give it back at resume
/// (the machine itself is a paused session on disk). Lost with the
/// server process: a sandbox paused before a restart resumes with its
/// template id from its image and no metadata or env vars.
#[derive(Debug, Clone)]
pub(crate) struct PausedRecord {
    /// The template id create named.
    pub template_id: String,
    /// Create's `metadata`.
    pub metadata: BTreeMap<String, String>,
    /// Create's `envVars`.
    pub env_vars: BTreeMap<String, String>,
    /// When it first started.
    pub started_at: SystemTime,
    /// Create's `autoPause`, for its next end.
    pub auto_pause: bool,
    /// Its tenant (records are pruned per tenant).
    pub tenant: String,
}

impl PausedRecord {
    fn of(sandbox: &Sandbox) -> Self {
        Self {
            template_id: sandbox.template_id.clone(),
            metadata: sandbox.metadata.clone(),
            env_vars: sandbox.env_vars.clone(),
            started_at: sandbox.started_at,
            auto_pause: sandbox.auto_pause,
            tenant: sandbox.caller.tenant.clone(),
        }
    }
}

/// The live E2B sandboxes, by id, and what E2B says of the paused ones.
#[derive(Default)]
pub(crate) struct Sandboxes {
    map: Mutex<HashMap<String, Arc<Sandbox>>>,
    /// Shared with the timers, which pause sandboxes made with
    /// `autoPause`.
    paused: Arc<Mutex<HashMap<String, PausedRecord>>>,
}

impl Sandboxes {
    /// Registers the sandbox of `session` and starts its timer.
    pub fn insert(
        &self,
        airlock: &Airlock,
        session: Arc<Session>,
        new: NewSandbox,
    ) -> Arc<Sandbox> {
        let now = SystemTime::now();
        let sandbox = Arc::new(Sandbox {
            id: session.id().to_owned(),
            caller: new.caller,
            template_id: new.template_id,
            image: new.image,
            metadata: new.metadata,
            env_vars: new.env_vars,
            memory_mib: new.memory_mib,
            vcpus: new.vcpus,
            started_at: now,
            auto_pause: new.auto_pause,
            end_at: Mutex::new(now + new.timeout),
            access_token: new_token("ea_"),
            traffic_token: new_token("et_"),
            executions: std::sync::atomic::AtomicU64::new(0),
            session,
            contexts: Mutex::new(Vec::new()),
            processes: Arc::default(),
            moved: Arc::new(tokio::sync::Notify::new()),
            timer: Mutex::new(None),
        });
        let timer = tokio::spawn(expire(
            Arc::downgrade(&sandbox),
            airlock.clone(),
            Arc::clone(&self.paused),
        ));
        *lock(&sandbox.timer) = Some(timer);
        lock(&self.map).insert(sandbox.id.clone(), sandbox.clone());
        sandbox
    }

    /// The sandbox `id` of `tenant` (any tenant's when `None`), if live;
    /// a closed one is dropped.
    pub fn get(&self, tenant: Option<&str>, id: &str) -> Option<Arc<Sandbox>> {
        let mut map = lock(&self.map);
        let sandbox = map.get(id)?.clone();
        if !sandbox.is_live() {
            map.remove(id);
            return None;
        }
        match tenant {
            Some(t) if t != sandbox.caller.tenant => None,
            _ => Some(sandbox),
        }
    }

    /// Takes `tenant`'s sandbox `id` out of the table.
    pub fn remove(&self, tenant: &str, id: &str) -> Option<Arc<Sandbox>> {
        let mut map = lock(&self.map);
        match map.get(id) {
            Some(s) if s.caller.tenant == tenant => map.remove(id),
            _ => None,
        }
    }

    /// Keeps what E2B says of `sandbox`, now paused.
    pub fn keep_paused(&self, sandbox: &Sandbox) {
        lock(&self.paused).insert(sandbox.id.clone(), PausedRecord::of(sandbox));
    }

    /// What E2B said of paused sandbox `id`, if this process paused it.
    pub fn paused_record(&self, id: &str) -> Option<PausedRecord> {
        lock(&self.paused).get(id).cloned()
    }

    /// Forgets the records of `tenant`'s paused sandboxes that are not in
    /// `paused` (their saved copies expired).
    pub fn prune_paused(&self, tenant: &str, paused: &[String]) {
        lock(&self.paused)
            .retain(|id, record| record.tenant != tenant || paused.iter().any(|p| p == id));
    }

    /// Takes `sandbox` out of the table if it is still the one there.
    pub fn remove_this(&self, sandbox: &Arc<Sandbox>) {
        let mut map = lock(&self.map);
        if map
            .get(&sandbox.id)
            .is_some_and(|s| Arc::ptr_eq(s, sandbox))
        {
            map.remove(&sandbox.id);
        }
    }

    /// Forgets paused sandbox `id` (resumed or killed).
    pub fn forget_paused(&self, id: &str) {
        lock(&self.paused).remove(id);
    }

    /// `tenant`'s live sandboxes, oldest first.
    pub fn list(&self, tenant: &str) -> Vec<Arc<Sandbox>> {
        let mut map = lock(&self.map);
        map.retain(|_, s| s.is_live());
        let mut out: Vec<_> = map
            .values()
            .filter(|s| s.caller.tenant == tenant)
            .cloned()
            .collect();
        out.sort_by(|a, b| a.started_at.cmp(&b.started_at).then(a.id.cmp(&b.id)));
        out
    }
}

/// The timer of one sandbox: sleeps until its end time (again when it
/// moves), then closes its session. Ends when the sandbox is gone.
async fn expire(
    sandbox: Weak<Sandbox>,
    airlock: Airlock,
    paused: Arc<Mutex<HashMap<String, PausedRecord>>>,
) {
    loop {
        let Some(live) = sandbox.upgrade() else {
            return;
        };
        let left = live
            .end_at()
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        if left.is_zero() && live.auto_pause {
            // Its record first: a resume may come as soon as it is paused.
            lock(&paused).insert(live.id.clone(), PausedRecord::of(&live));
            match airlock.pause_session(&live.caller, &live.id).await {
                Ok(_) => {
                    tracing::info!(sandbox_id = live.id, "e2b sandbox timed out: paused");
                    return;
                }
                Err(e) => {
                    lock(&paused).remove(&live.id);
                    tracing::warn!(sandbox_id = live.id, error = %e, "e2b sandbox timed out: cannot pause it, killed");
                }
            }
        }
        if left.is_zero() {
            tracing::info!(
                sandbox_id = live.id,
                tenant = live.caller.tenant,
                "e2b sandbox timed out: killed"
            );
            // Not found: closed meanwhile by another path; nothing left.
            let _ = airlock.close_session(&live.caller, &live.id).await;
            return;
        }
        let notify = Arc::clone(&live.moved);
        drop(live);
        let moved = notify.notified();
        let mut moved = std::pin::pin!(moved);
        // A move between the drop and here is kept by `notify_one`'s permit.
        moved.as_mut().enable();
        tokio::select! {
            () = tokio::time::sleep(left) => {}
            () = &mut moved => {}
        }
    }
}
