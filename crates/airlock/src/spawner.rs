//! Children that die with Airlock (`docs/architecture.md`, "Nothing
//! outlives its owner"): QEMU and gvproxy get `PR_SET_PDEATHSIG` =
//! SIGKILL, so that the kernel kills them when the Airlock process dies,
//! however it dies (SIGKILL included).
//!
//! The parent-death signal fires when the *thread* that forked the child
//! exits, not the process. Tokio runs a spawn on whichever worker or
//! blocking-pool thread polls it, and blocking-pool threads end when idle:
//! a VM spawned there would be killed seconds later. So every such child
//! is forked by one dedicated thread, started on first use and never
//! ending while the process lives. The child is still a tokio child of the
//! caller's runtime (the thread enters it to spawn).
//!
//! The child re-checks its parent after setting the signal: had the owner
//! died between fork and `prctl`, no signal would ever come, so the child
//! exits at once instead.
//!
//! A job that panics must not end that thread (its end would SIGKILL every
//! child it forked): each job runs under `catch_unwind`, and its caller
//! gets an error. Should the thread be gone all the same, the next spawn
//! starts a new one.

use std::io;
use std::os::unix::process::CommandExt;
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use tokio::process::{Child, Command};

/// Work for the spawner thread.
type Job = Box<dyn FnOnce() + Send>;

/// Makes `cmd`'s child receive SIGKILL when the thread that forks it (and
/// so the process) dies; a child whose parent is gone before the signal
/// was set exits at once. Add it last, after hooks that change
/// credentials: a change of uid or gid clears the signal.
pub fn die_with_parent(cmd: &mut std::process::Command) {
    let parent = std::process::id();
    // SAFETY: the hook runs between fork and exec in the child, where only
    // async-signal-safe calls are allowed: it makes two syscalls (prctl,
    // getppid) and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(|errno| io::Error::from_raw_os_error(errno as i32))?;
            if parent_is(parent, nix::unistd::getppid().as_raw()) {
                Ok(())
            } else {
                // The owner is gone: no signal will ever come.
                Err(io::Error::from_raw_os_error(libc::ESRCH))
            }
        });
    }
}

/// Whether the child's parent (`getppid`) is still `parent`: once the
/// parent has died the child is re-parented (to init or a subreaper).
fn parent_is(parent: u32, ppid: i32) -> bool {
    u32::try_from(ppid).is_ok_and(|ppid| ppid == parent)
}

/// Queues `job` on the spawner thread, starting the thread on first use,
/// or again should the one before be gone.
fn submit(job: Job) -> io::Result<()> {
    static SPAWNER: OnceLock<Mutex<Option<mpsc::Sender<Job>>>> = OnceLock::new();
    let slot = SPAWNER.get_or_init(|| Mutex::new(None));
    let mut slot = slot
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let job = match slot.as_ref() {
        Some(jobs) => match jobs.send(job) {
            Ok(()) => return Ok(()),
            Err(mpsc::SendError(job)) => {
                tracing::error!("the airlock-spawner thread is gone: starting another");
                job
            }
        },
        None => job,
    };
    let (jobs, queue) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("airlock-spawner".into())
        .spawn(move || {
            // Lives as long as the process: the sender is kept in a static.
            for job in queue {
                // Unwinding out of here would end the thread, and with it
                // (the parent-death signal) every child it forked.
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                    tracing::error!("a job of the airlock-spawner thread panicked");
                }
            }
        })?;
    jobs.send(job)
        .map_err(|_| io::Error::other("the airlock-spawner thread ended at once"))?;
    *slot = Some(jobs);
    Ok(())
}

/// Runs `work` on the spawner thread inside the current tokio runtime and
/// returns its result.
///
/// # Errors
/// An `Other` error if the spawner thread cannot be started or `work`
/// panicked (the thread carries on).
async fn on_spawner<T, F>(work: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let runtime = tokio::runtime::Handle::current();
    let (reply, answer) = tokio::sync::oneshot::channel();
    submit(Box::new(move || {
        let _entered = runtime.enter();
        // If the caller went away, the result is dropped here (a child
        // with kill_on_drop is killed).
        let _ = reply.send(work());
    }))?;
    answer
        .await
        .map_err(|_| io::Error::other("a job of the airlock-spawner thread failed (panicked)"))
}

/// Spawns `cmd` from the spawner thread with [`die_with_parent`] (added
/// last), as a child of the current tokio runtime. Everything else set on
/// `cmd` (process group, `kill_on_drop`, other pre-exec hooks) holds.
///
/// # Errors
/// The spawn's error; an `Other` error if the spawner thread cannot be
/// started. Must be called inside a tokio runtime.
pub async fn spawn(mut cmd: Command) -> io::Result<Child> {
    die_with_parent(cmd.as_std_mut());
    on_spawner(move || cmd.spawn()).await?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn only_the_recorded_parent_counts() {
        assert!(parent_is(4242, 4242));
        assert!(!parent_is(4242, 1));
        assert!(!parent_is(4242, -1));
    }

    #[test]
    fn a_child_dies_with_the_thread_that_forked_it() {
        let forker = std::thread::spawn(|| {
            let mut cmd = std::process::Command::new("sleep");
            cmd.arg("30");
            die_with_parent(&mut cmd);
            cmd.spawn().unwrap()
        });
        // The forking thread has ended: the kernel sends the signal.
        let mut child = forker.join().unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    }

    #[tokio::test]
    async fn children_of_the_spawner_thread_outlive_the_calling_thread() {
        let handle = tokio::runtime::Handle::current();
        // Spawned from a short-lived thread, forked by the spawner thread.
        let mut child = std::thread::spawn(move || {
            handle.block_on(async {
                let mut cmd = Command::new("sleep");
                cmd.arg("30").kill_on_drop(true);
                spawn(cmd).await.unwrap()
            })
        })
        .join()
        .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(child.try_wait().unwrap().is_none(), "still running");
        child.start_kill().unwrap();
        let status = child.wait().await.unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }

    #[tokio::test]
    async fn a_panicking_job_fails_its_caller_and_spares_the_thread_and_its_children() {
        let mut before = Command::new("sleep");
        before.arg("30").kill_on_drop(true);
        let mut before = spawn(before).await.unwrap();
        let thread = on_spawner(|| std::thread::current().id()).await.unwrap();

        let err = on_spawner(|| -> () { panic!("a job panics") })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("panicked"), "{err}");

        assert_eq!(
            on_spawner(|| std::thread::current().id()).await.unwrap(),
            thread,
            "the same spawner thread carries on"
        );
        let mut after = Command::new("sleep");
        after.arg("30").kill_on_drop(true);
        let mut after = spawn(after).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(
            before.try_wait().unwrap().is_none(),
            "a child forked before the panic still runs"
        );
        assert!(after.try_wait().unwrap().is_none());
        for child in [&mut before, &mut after] {
            child.start_kill().unwrap();
            child.wait().await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_spawn_error_comes_back_to_the_caller() {
        let err = spawn(Command::new("/nonexistent/qemu")).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
