//! What a fork's children wait for while their parent is being saved.
//!
//! A fork's children are built while the parent is saved, not after: on
//! a 2-core host the save (QEMU's migration thread) leaves a core mostly
//! idle. A child's work dir, root overlay and limits group owe nothing to
//! the save and are made at once; its workspace overlay needs the saved
//! disk ([`Gate::disk_saved`]: the disk is copied while the RAM streams,
//! so it comes early), and its QEMU starts once that overlay is placed
//! (the drive is on its command line); its load needs the state stream
//! ([`Gate::saved`]). A child with no workspace disk starts its QEMU at
//! once.
//!
//! The save's side ([`GateSender`]) moves the gate forward; dropped
//! before [`Stage::Saved`] (the save failed, or the fork was cancelled),
//! it fails every wait, and each child's boot tears down what it made.

use crate::error::BootError;
use tokio::sync::watch;

/// How far the parent's save has come.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stage {
    /// Saving: nothing is written yet.
    Saving,
    /// The workspace disk is saved (or there is none); the state streams on.
    DiskSaved,
    /// The state and the disk are saved: a child can load them.
    Saved,
    /// The save will write nothing a child can load, and why.
    Failed(String),
}

/// The save's side of a [`Gate`]: moves it forward. Dropped before
/// [`GateSender::saved`], it fails the gate.
#[derive(Debug)]
pub(crate) struct GateSender {
    stage: watch::Sender<Stage>,
}

/// The children's side: waits for the parent's save to come far enough.
#[derive(Debug, Clone)]
pub(crate) struct Gate {
    stage: watch::Receiver<Stage>,
}

/// A new gate, closed (the save just started).
pub(crate) fn gate() -> (GateSender, Gate) {
    let (stage, receiver) = watch::channel(Stage::Saving);
    (GateSender { stage }, Gate { stage: receiver })
}

impl GateSender {
    /// The workspace disk is saved: children may place their overlay over it.
    pub(crate) fn disk_saved(&self) {
        self.stage.send_if_modified(|stage| {
            let forward = *stage == Stage::Saving;
            if forward {
                *stage = Stage::DiskSaved;
            }
            forward
        });
    }

    /// Everything is saved: children may load it.
    pub(crate) fn saved(self) {
        self.stage.send_replace(Stage::Saved);
    }

    /// The save wrote nothing the children can load: every wait fails
    /// with `why`.
    pub(crate) fn fail(self, why: impl Into<String>) {
        self.stage.send_replace(Stage::Failed(why.into()));
    }
}

impl Drop for GateSender {
    fn drop(&mut self) {
        self.stage.send_if_modified(|stage| {
            let open = matches!(stage, Stage::Saving | Stage::DiskSaved);
            if open {
                *stage = Stage::Failed("the parent's save ended before it was done".into());
            }
            open
        });
    }
}

impl Gate {
    /// Waits until the workspace disk is saved.
    ///
    /// # Errors
    /// [`BootError::ParentSave`] when the save fails first (`label` names
    /// the fork in it).
    pub(crate) async fn disk_saved(&self, label: &str) -> Result<(), BootError> {
        self.wait(label, |stage| {
            matches!(stage, Stage::DiskSaved | Stage::Saved)
        })
        .await
    }

    /// Waits until the state and the disk are saved.
    ///
    /// # Errors
    /// As [`Gate::disk_saved`].
    pub(crate) async fn saved(&self, label: &str) -> Result<(), BootError> {
        self.wait(label, |stage| *stage == Stage::Saved).await
    }

    /// Waits for `reached`, or for a failure. Bounded by the sender: the
    /// save has a deadline of its own, and a sender gone fails the gate.
    async fn wait(&self, label: &str, reached: fn(&Stage) -> bool) -> Result<(), BootError> {
        let mut stage = self.stage.clone();
        let seen = stage
            .wait_for(|stage| reached(stage) || matches!(stage, Stage::Failed(_)))
            .await
            .map(|seen| seen.clone());
        match seen {
            Ok(Stage::Failed(why)) => Err(BootError::ParentSave {
                label: label.to_owned(),
                reason: why,
            }),
            Ok(_) => Ok(()),
            // Not reached: the sender's drop fails the gate first.
            Err(_) => Err(BootError::ParentSave {
                label: label.to_owned(),
                reason: "the parent's save was dropped".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn settles<F: std::future::Future>(wait: F) -> Option<F::Output> {
        tokio::time::timeout(Duration::from_millis(50), wait)
            .await
            .ok()
    }

    #[tokio::test]
    async fn a_child_places_its_disk_before_the_state_is_saved_and_loads_after() {
        let (sender, gate) = gate();
        assert!(settles(gate.disk_saved("f")).await.is_none());
        sender.disk_saved();
        assert!(settles(gate.disk_saved("f")).await.unwrap().is_ok());
        assert!(settles(gate.saved("f")).await.is_none());
        sender.saved();
        assert!(settles(gate.saved("f")).await.unwrap().is_ok());
        assert!(settles(gate.disk_saved("f")).await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn a_failed_save_fails_every_wait_with_its_reason() {
        let (sender, gate) = gate();
        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move { gate.saved("fork of s").await }
        });
        sender.disk_saved();
        sender.fail("QEMU refused the migration");
        let e = waiting.await.unwrap().unwrap_err();
        assert!(matches!(e, BootError::ParentSave { .. }), "{e}");
        assert!(e.to_string().contains("QEMU refused the migration"), "{e}");
        assert!(e.to_string().contains("fork of s"), "{e}");
        assert!(gate.disk_saved("f").await.is_err());
    }

    #[tokio::test]
    async fn a_save_dropped_half_way_fails_the_children_instead_of_leaving_them_waiting() {
        let (sender, gate) = gate();
        sender.disk_saved();
        drop(sender);
        let e = settles(gate.saved("f")).await.unwrap().unwrap_err();
        assert!(e.to_string().contains("ended before it was done"), "{e}");
        assert!(!e.is_transient());
    }
}
