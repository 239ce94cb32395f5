//! The default memory templates (`docs/templates.md`): python, javascript
//! and raw at the default shape, built after the images by the `airlock`
//! library itself, so that the first `airlock run` (and the demo and the
//! tests) restores instead of building one. Cached: a template whose key
//! and checks pass is skipped; a stale or damaged one is rebuilt.

use super::progress::{mib, Step};
use airlock::template::{Found, TemplateShape};
use airlock_protocol::Language;
use anyhow::{Context, Result};
use std::path::Path;

/// The shapes built: every language at `airlock run`'s default shape.
pub fn default_shapes() -> Vec<TemplateShape> {
    [Language::Python, Language::Javascript, Language::Raw]
        .into_iter()
        .map(|language| TemplateShape {
            language,
            image: None,
            memory_mib: airlock::DEFAULT_MEMORY_MIB,
            vcpus: 1,
            disk_mib: airlock::spec::DEFAULT_DISK_MIB,
        })
        .collect()
}

/// Builds the default templates for the images in `images_dir` that are
/// missing, stale or damaged, each with a progress line.
///
/// # Errors
/// When the orchestrator cannot start (no QEMU, images unreadable) or a
/// template build fails.
pub fn ensure_default(images_dir: &Path) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("start a tokio runtime")?;
    runtime.block_on(async {
        let config = airlock::Config {
            images_dir: images_dir.to_path_buf(),
            // Each template boots one VM: no overlay kept ready.
            overlay_pool_target: 0,
            ..airlock::Config::default()
        };
        let scheduler = airlock::Scheduler::start(config)
            .await
            .context("start the orchestrator to build memory templates")?;
        let built = build_missing(&scheduler).await;
        scheduler.shutdown().await;
        built
    })
}

async fn build_missing(scheduler: &airlock::Scheduler) -> Result<()> {
    let templates = scheduler
        .templates()
        .expect("a started scheduler has templates");
    for shape in default_shapes() {
        let label = format!("template {shape}");
        let inputs = match templates.find(shape).await? {
            Found::Ready(template) => {
                eprintln!("images: {label} is current ({})", template.metadata.key);
                continue;
            }
            Found::Build { inputs, damaged } => {
                if let Some(reason) = damaged {
                    eprintln!("images: {label}: rebuilding ({reason})");
                }
                inputs
            }
        };
        let step = Step::start(format!("{label}: boot, warm and save"));
        let template = templates
            .build(&inputs)
            .await
            .with_context(|| format!("build the memory {label}"))?;
        step.done(&format!(
            "{} (device state {})",
            template.metadata.key,
            mib(template.metadata.state_bytes)
        ));
    }
    Ok(())
}
