//! A fork's children, and a resumed session, over their template's
//! memory file.
//!
//! A session's RAM is a private mapping of its template's memory file (a
//! template clone) or anonymous (a resumed session), so the parent's save
//! holds all of it, and a child loading that stream copies every page into
//! memory of its own. But most of a session's RAM is still what its
//! template held: so the saved stream is filtered against the template's
//! memory file as QEMU writes it (`save.rs`, [`crate::pause::StateSink`];
//! [`airlock_qemu::delta_against_base`]: every page the file already
//! holds at its offset is dropped), and each child maps that file
//! privately, as a template clone does, and loads only the pages that
//! differ. The children then share, copy on write, every page of the
//! template none of them changed, and each reads a fraction of the stream.
//!
//! A resumed session does the same with its saved stream
//! ([`delta_of_saved`]): a pause keeps the whole stream (it must outlive
//! its template), and the resume filters it against the template's memory
//! file of the day. The filter compares content, so any file is a correct
//! base: pages it does not hold are kept.
//!
//! Why not one shared file of the parent's whole RAM (a *loader* QEMU
//! loading the stream into a shared memory file the children then map):
//! measured on QEMU 7.2, loading into a shared mapping allocates every
//! page of the file (QEMU reads each zero page to compare it, and a read
//! fault on a shared file allocates), which took 380 to 650 ms for a
//! 512 MiB VM, more than the four children's own loads
//! (`docs/persistence.md`).

use crate::template::{Found, TemplateShape, Templates};
use std::path::PathBuf;

/// The filtered stream the children load, in the fork's dir.
pub const DELTA_FILE: &str = "state.delta";

/// The memory file of the current template of `shape` (over the package
/// layer `layer`): what a fork's children map and their parent's stream
/// is filtered against. `None` (logged) when there is none: the children
/// then load the whole stream.
pub(crate) async fn template_memory(
    templates: &Templates,
    shape: TemplateShape,
    layer: Option<&str>,
    session_id: &str,
) -> Option<PathBuf> {
    match templates.find_over(shape, layer).await {
        Ok(Found::Ready(template)) => Some(template.memory_file()),
        Ok(Found::Build { .. }) => {
            tracing::debug!(
                session_id,
                "no template to fork over: the children load the whole state"
            );
            None
        }
        Err(e) => {
            tracing::warn!(session_id, error = %e, "no template to fork over: the children load the whole state");
            None
        }
    }
}

/// Filters the saved whole stream `state` against the memory file `base`
/// into `delta` (on a blocking thread). `false` (logged) when the filter
/// refuses the stream or a file cannot be read: then the whole stream is
/// loaded, as before.
pub(crate) async fn delta_of_saved(
    state: PathBuf,
    base: PathBuf,
    delta: PathBuf,
    session_id: &str,
) -> bool {
    let filtered = crate::task::blocking("filter a saved state", move || {
        let open = |path: &PathBuf| {
            std::fs::File::open(path).map_err(|e| format!("open {}: {e}", path.display()))
        };
        let (from, base) = (open(&state)?, open(&base)?);
        let to = std::fs::File::create(&delta)
            .map_err(|e| format!("create {}: {e}", delta.display()))?;
        airlock_qemu::delta_against_base(from, to, airlock_qemu::MEMORY_BACKEND_ID, &base)
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|filtered| filtered);
    match filtered {
        Ok(stats) => {
            tracing::debug!(
                session_id,
                kept = stats.kept,
                pages = stats.pages,
                "the saved state filtered against its template"
            );
            true
        }
        Err(error) => {
            tracing::warn!(session_id, %error, "the saved state is loaded whole");
            false
        }
    }
}
