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

/// The spawner thread's queue (started on first use).
fn spawner() -> io::Result<mpsc::Sender<Job>> {
    static SPAWNER: OnceLock<Mutex<Option<mpsc::Sender<Job>>>> = OnceLock::new();
    let slot = SPAWNER.get_or_init(|| Mutex::new(None));
    let mut slot = slot
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(jobs) = slot.as_ref() {
        return Ok(jobs.clone());
    }
    let (jobs, queue) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("airlock-spawner".into())
        .spawn(move || {
            // Lives as long as the process: the sender is kept in a static.
            for job in queue {
                job();
            }
        })?;
    *slot = Some(jobs.clone());
    Ok(jobs)
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
    let runtime = tokio::runtime::Handle::current();
    let (reply, answer) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _entered = runtime.enter();
        // If the caller went away, the child is dropped here (kill_on_drop).
        let _ = reply.send(cmd.spawn());
    });
    spawner()?
        .send(job)
        .map_err(|_| io::Error::other("the airlock-spawner thread is gone"))?;
    answer
        .await
        .map_err(|_| io::Error::other("the airlock-spawner thread dropped a spawn"))?
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
    async fn a_spawn_error_comes_back_to_the_caller() {
        let err = spawn(Command::new("/nonexistent/qemu")).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
