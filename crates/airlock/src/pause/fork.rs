//! A fork's children over their template's memory file.
//!
//! A session's RAM is a private mapping of its template's memory file (a
//! template clone) or anonymous (a resumed session), so the parent's save
//! holds all of it, and a child loading that stream copies every page into
//! memory of its own. But most of a session's RAM is still what its
//! template held: so the saved stream is filtered against the template's
//! memory file ([`airlock_qemu::delta_against_base`]: every page the file
//! already holds at its offset is dropped), and each child maps that file
//! privately, as a template clone does, and loads only the pages that
//! differ. The children then share, copy on write, every page of the
//! template none of them changed, and each reads a fraction of the stream.
//!
//! Why not one shared file of the parent's whole RAM (a *loader* QEMU
//! loading the stream into a shared memory file the children then map):
//! measured on QEMU 7.2, loading into a shared mapping allocates every
//! page of the file (QEMU reads each zero page to compare it, and a read
//! fault on a shared file allocates), which took 380 to 650 ms for a
//! 512 MiB VM, more than the four children's own loads
//! (`docs/persistence.md`).

use crate::template::{Found, TemplateShape, Templates};
use airlock_qemu::delta_against_base;
use std::path::{Path, PathBuf};

/// The filtered stream the children load, in the fork's dir.
pub const DELTA_FILE: &str = "state.delta";

/// What a fork's children load: a stream, and the memory file their RAM
/// starts as (`None`: the RAM starts empty and the stream holds it all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildSource {
    /// The migration stream.
    pub state: PathBuf,
    /// The template memory file the stream was filtered against.
    pub base_memory: Option<PathBuf>,
}

/// Where the children of a parent saved in `state` load from: the stream
/// filtered against the memory file of the current template of `shape`
/// (over the package layer `layer`) when the parent's RAM is named
/// (`named_ram`: a memory file can take it) and that template exists;
/// else `state` whole. A failed filter is logged and falls back to the
/// whole stream: it only costs speed.
pub(crate) async fn child_source(
    templates: &Templates,
    shape: TemplateShape,
    layer: Option<&str>,
    named_ram: bool,
    state: &Path,
    session_id: &str,
) -> ChildSource {
    let whole = ChildSource {
        state: state.to_path_buf(),
        base_memory: None,
    };
    if !named_ram {
        return whole;
    }
    let memory = match templates.find_over(shape, layer).await {
        Ok(Found::Ready(template)) => template.memory_file(),
        Ok(Found::Build { .. }) => {
            tracing::debug!(
                session_id,
                "no template to fork over: the children load the whole state"
            );
            return whole;
        }
        Err(e) => {
            tracing::warn!(session_id, error = %e, "no template to fork over: the children load the whole state");
            return whole;
        }
    };
    let delta = state.with_file_name(DELTA_FILE);
    let (from, to, base) = (state.to_path_buf(), delta.clone(), memory.clone());
    let filtered = crate::task::blocking("filter a fork's state", move || {
        filter_file(&from, &to, &base)
    })
    .await;
    match filtered {
        Ok(Ok(stats)) => {
            tracing::info!(
                session_id,
                pages = stats.pages,
                kept = stats.kept,
                bytes_in = stats.bytes_in,
                bytes_out = stats.bytes_out,
                "fork state filtered against its template"
            );
            ChildSource {
                state: delta,
                base_memory: Some(memory),
            }
        }
        Ok(Err(e)) => {
            tracing::warn!(session_id, error = %e, "fork state not filtered: the children load it whole");
            whole
        }
        Err(e) => {
            tracing::warn!(session_id, error = %e, "fork state not filtered: the children load it whole");
            whole
        }
    }
}

/// Filters the stream `from` against the memory file `base` into `to`.
fn filter_file(from: &Path, to: &Path, base: &Path) -> Result<airlock_qemu::DeltaStats, String> {
    let open = |path: &Path| {
        std::fs::File::open(path).map_err(|e| format!("open {}: {e}", path.display()))
    };
    let (input, base_file) = (open(from)?, open(base)?);
    let output = std::fs::File::create(to).map_err(|e| format!("create {}: {e}", to.display()))?;
    delta_against_base(input, output, airlock_qemu::MEMORY_BACKEND_ID, &base_file)
        .map_err(|e| e.to_string())
}
