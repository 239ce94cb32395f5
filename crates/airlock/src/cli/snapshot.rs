//! `airlock snapshot build | list | prune`: the memory templates that
//! `airlock run` restores from (`docs/templates.md`), and the package
//! layers runs attach (`docs/packages.md`; listed and pruned only: a layer
//! is built by the first run of its list).

use crate::config::Config;
use crate::error::{Error, Result};
use crate::packages::ListedLayer;
use crate::request::DEFAULT_MEMORY_MIB;
use crate::template::{Listed, TemplateShape, Templates};
use crate::VmManager;
use airlock_protocol::Language;
use clap::{Args, Subcommand};
use std::time::Duration;

/// Arguments of `airlock snapshot`.
#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// What to do with the memory templates.
    #[command(subcommand)]
    pub action: SnapshotAction,
}

/// The `airlock snapshot` subcommands.
#[derive(Debug, Subcommand)]
pub enum SnapshotAction {
    /// Build (or rebuild) the memory template of a shape.
    Build {
        /// python, javascript or raw.
        #[arg(short, long, default_value = "python")]
        language: String,
        /// Guest memory in MiB.
        #[arg(short, long, default_value_t = DEFAULT_MEMORY_MIB)]
        memory: u32,
        /// Number of vCPUs.
        #[arg(long, default_value_t = 1)]
        cpus: u32,
    },
    /// List the templates (shape, disk size, age, uses, and whether the
    /// current images and QEMU can restore them) and the package layers
    /// (packages, disk size, age, and whether the current root disks can
    /// use them).
    List,
    /// Remove the templates the current images and QEMU cannot restore
    /// (other kernel, root disk, QEMU or agent), damaged ones, and
    /// half-built ones; and the package layers of other root disks,
    /// damaged ones and half-built ones.
    Prune,
}

/// Runs `airlock snapshot`; returns the process exit status.
pub async fn run(args: SnapshotArgs) -> i32 {
    let config = Config {
        overlay_pool_target: 0,
        ..Config::default()
    };
    let manager = match VmManager::start(config).await {
        Ok(m) => m,
        Err(e) => return failed(&e),
    };
    let templates = Templates::new(manager.clone());
    let status = match action(&manager, &templates, args.action).await {
        Ok(()) => 0,
        Err(e) => failed(&e),
    };
    manager.shutdown().await;
    status
}

async fn action(manager: &VmManager, templates: &Templates, action: SnapshotAction) -> Result<()> {
    match action {
        SnapshotAction::Build {
            language,
            memory,
            cpus,
        } => {
            let language = language
                .parse::<Language>()
                .map_err(|e| Error::invalid("language", e.to_string()))?;
            let shape = TemplateShape {
                language,
                memory_mib: memory,
                vcpus: cpus,
            };
            let inputs = templates.inputs(shape)?;
            eprintln!("airlock: building the memory template for {shape}...");
            // An explicit build replaces what is there.
            let store = templates.store().clone();
            let key = inputs.key();
            crate::manager::blocking("remove a memory template", move || store.remove(&key))
                .await?
                .map_err(|e| Error::io("remove", templates.store().dir(&inputs.key()), e))?;
            let template = templates.build(&inputs).await?;
            println!(
                "{}\t{} ms\t{}",
                template.metadata.key,
                template.metadata.build_ms,
                template.dir.display()
            );
            Ok(())
        }
        SnapshotAction::List => {
            let listed = listed(manager, templates).await?;
            println!("KEY\tSHAPE\tDISK\tAGE\tUSES\tSTATE");
            for (entry, current) in listed {
                let shape = entry.metadata.as_ref().map_or_else(
                    |_| "?".to_owned(),
                    |m| match &m.inputs.packages_layer {
                        Some(layer) => format!("{} + {layer}", m.inputs.shape),
                        None => m.inputs.shape.to_string(),
                    },
                );
                println!(
                    "{}\t{shape}\t{}\t{}\t{}\t{}",
                    entry.key,
                    mib(entry.disk_bytes),
                    entry.age.map_or_else(|| "?".to_owned(), age),
                    entry.uses,
                    if current { "current" } else { "stale" }
                );
            }
            let layers = listed_layers(manager).await?;
            println!();
            println!("LAYER\tPACKAGES\tDISK\tAGE\tSTATE");
            for (entry, current) in layers {
                let packages = entry
                    .metadata
                    .as_ref()
                    .map_or_else(|_| "?".to_owned(), |m| m.inputs.packages.join(","));
                println!(
                    "{}\t{packages}\t{}\t{}\t{}",
                    entry.key,
                    mib(entry.disk_bytes),
                    entry.age.map_or_else(|| "?".to_owned(), age),
                    if current { "current" } else { "stale" }
                );
            }
            Ok(())
        }
        SnapshotAction::Prune => {
            let current: Vec<String> = listed(manager, templates)
                .await?
                .into_iter()
                .filter(|(_, current)| *current)
                .map(|(entry, _)| entry.key)
                .collect();
            let store = templates.store().clone();
            let root = store.root().to_path_buf();
            let removed = crate::manager::blocking("prune memory templates", move || {
                store.prune(|entry| current.contains(&entry.key))
            })
            .await?
            .map_err(|e| Error::io("prune templates in", root, e))?;
            for key in &removed {
                println!("removed {key}");
            }
            eprintln!("airlock: {} template(s) removed", removed.len());
            let store = crate::packages::install::store_of(manager);
            let root = store.root().to_path_buf();
            let rootfs = manager.images().rootfs_hash.clone();
            let removed = crate::manager::blocking("prune package layers", move || {
                store.prune(|entry| crate::packages::layer::is_current(entry, &rootfs))
            })
            .await?
            .map_err(|e| Error::io("prune package layers in", root, e))?;
            for key in &removed {
                println!("removed {key}");
            }
            eprintln!("airlock: {} package layer(s) removed", removed.len());
            Ok(())
        }
    }
}

/// Every template, and whether it is the intact current template of its
/// shape (same inputs as this host and these images would build).
/// A template over a package layer is current only while that layer is.
async fn listed(manager: &VmManager, templates: &Templates) -> Result<Vec<(Listed, bool)>> {
    let store = templates.store().clone();
    let entries = crate::manager::blocking("list memory templates", move || store.list()).await?;
    let layers: Vec<String> = listed_layers(manager)
        .await?
        .into_iter()
        .filter(|(_, current)| *current)
        .map(|(layer, _)| layer.key)
        .collect();
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let current = match &entry.metadata {
            Ok(metadata) => {
                let shape = metadata.inputs.shape;
                let layer = metadata.inputs.packages_layer.as_deref();
                layer.is_none_or(|key| layers.iter().any(|k| k == key))
                    && matches!(templates.find_over(shape, layer).await, Ok(crate::template::Found::Ready(t)) if t.metadata.key == entry.key)
            }
            Err(_) => false,
        };
        out.push((entry, current));
    }
    Ok(out)
}

/// Every package layer, and whether the current root disks can use it.
async fn listed_layers(manager: &VmManager) -> Result<Vec<(ListedLayer, bool)>> {
    let store = crate::packages::install::store_of(manager);
    let rootfs = manager.images().rootfs_hash.clone();
    crate::manager::blocking("list package layers", move || {
        store
            .list()
            .into_iter()
            .map(|entry| {
                let current = crate::packages::layer::is_current(&entry, &rootfs);
                (entry, current)
            })
            .collect()
    })
    .await
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

fn age(age: Duration) -> String {
    let secs = age.as_secs();
    match secs {
        0..=119 => format!("{secs} s"),
        120..=7199 => format!("{} min", secs / 60),
        7200..=172_799 => format!("{} h", secs / 3600),
        _ => format!("{} d", secs / 86_400),
    }
}

fn failed(error: &Error) -> i32 {
    eprintln!("airlock: error: {error}");
    if let Some(hint) = error.hint() {
        eprintln!("airlock: hint: {hint}");
    }
    super::EXIT_AIRLOCK_FAILED
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_are_shown_in_the_largest_sensible_unit() {
        assert_eq!(age(Duration::from_secs(5)), "5 s");
        assert_eq!(age(Duration::from_secs(600)), "10 min");
        assert_eq!(age(Duration::from_secs(3 * 3600)), "3 h");
        assert_eq!(age(Duration::from_secs(3 * 86_400)), "3 d");
    }

    #[test]
    fn sizes_are_mebibytes() {
        assert_eq!(mib(60 << 20), "60.0 MiB");
    }
}
