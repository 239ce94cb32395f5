//! `airlock snapshot build | list | prune`: the memory templates that
//! `airlock run` restores from (`docs/templates.md`), and the package
//! layers runs attach (`docs/packages.md`; listed and pruned only: a layer
//! is built by the first run of its list).

use crate::error::CliError;
use crate::process::{self, Interrupts};
use airlock::template::TemplateShape;
use airlock::{Artifacts, Config, LayerEntry, TemplateEntry, VmManager, DEFAULT_MEMORY_MIB};
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
        /// python, javascript or raw. Default: the language of `--image`,
        /// else python.
        #[arg(short, long)]
        language: Option<String>,
        /// The image: python, javascript, raw or python-data (its template
        /// holds numpy, pandas and matplotlib imported). Default: the
        /// language's own.
        #[arg(long, value_name = "NAME")]
        image: Option<airlock::Image>,
        /// Guest memory in MiB.
        #[arg(short, long, default_value_t = DEFAULT_MEMORY_MIB)]
        memory: u32,
        /// Number of vCPUs.
        #[arg(long, default_value_t = 1)]
        cpus: u32,
    },
    /// List the templates (shape, its image first, disk size, age, uses,
    /// and whether the
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

/// Runs `airlock snapshot`; returns the process exit status. A stop
/// signal kills what it started (a template build's VM is torn down as
/// its future drops).
pub async fn run(args: SnapshotArgs, interrupts: &mut Interrupts) -> i32 {
    process::unless_interrupted(snapshot(args), interrupts).await
}

async fn snapshot(args: SnapshotArgs) -> i32 {
    let config = Config {
        overlay_pool_target: 0,
        ..Config::default()
    };
    let manager = match VmManager::start(config).await {
        Ok(m) => m,
        Err(e) => return process::failed(e),
    };
    let artifacts = Artifacts::new(manager.clone());
    let status = match action(&artifacts, args.action).await {
        Ok(()) => 0,
        Err(e) => process::failed(e),
    };
    manager.shutdown().await;
    status
}

async fn action(artifacts: &Artifacts, action: SnapshotAction) -> Result<(), CliError> {
    match action {
        SnapshotAction::Build {
            language,
            image,
            memory,
            cpus,
        } => {
            let shape = build_shape(language.as_deref(), image, memory, cpus)?;
            eprintln!("airlock: building the memory template for {shape}...");
            let template = artifacts.build_template(shape).await?;
            println!(
                "{}\t{} ms\t{}",
                template.metadata.key,
                template.metadata.build_ms,
                template.dir.display()
            );
            Ok(())
        }
        SnapshotAction::List => {
            let templates = artifacts.templates().await?;
            let layers = artifacts.layers().await?;
            print!("{}", listing(&templates, &layers));
            Ok(())
        }
        SnapshotAction::Prune => {
            let removed = artifacts.prune_templates().await?;
            for key in &removed {
                println!("removed {key}");
            }
            eprintln!("airlock: {} template(s) removed", removed.len());
            let removed = artifacts.prune_layers().await?;
            for key in &removed {
                println!("removed {key}");
            }
            eprintln!("airlock: {} package layer(s) removed", removed.len());
            Ok(())
        }
    }
}

/// The shape `airlock snapshot build` builds: the language asked, else
/// the image's, else python; checked (pure).
///
/// # Errors
/// A refused argument (`language`, `image`, `memory_mib`, `vcpus`).
fn build_shape(
    language: Option<&str>,
    image: Option<airlock::Image>,
    memory_mib: u32,
    vcpus: u32,
) -> Result<TemplateShape, CliError> {
    let asked = language
        .map(|name| {
            name.parse::<Language>()
                .map_err(|e| CliError::invalid("language", e.to_string()))
        })
        .transpose()?;
    let language = asked
        .or(image.map(airlock::Image::language))
        .unwrap_or(Language::Python);
    let mut shape = TemplateShape {
        memory_mib,
        vcpus,
        ..TemplateShape::new(language)
    };
    if let Some(image) = image {
        shape = shape.with_image(image);
    }
    shape.validate()?;
    Ok(shape)
}

/// The two tables of `airlock snapshot list` (pure).
fn listing(templates: &[TemplateEntry], layers: &[LayerEntry]) -> String {
    let mut out = String::from("KEY\tSHAPE\tDISK\tAGE\tUSES\tSTATE\n");
    for entry in templates {
        let shape = match (&entry.shape, &entry.packages_layer) {
            (None, _) => "?".to_owned(),
            (Some(shape), Some(layer)) => format!("{shape} + {layer}"),
            (Some(shape), None) => shape.to_string(),
        };
        out.push_str(&format!(
            "{}\t{shape}\t{}\t{}\t{}\t{}\n",
            entry.key,
            mib(entry.disk_bytes),
            entry.age.map_or_else(|| "?".to_owned(), age),
            entry.uses,
            state(entry.current)
        ));
    }
    out.push_str("\nLAYER\tPACKAGES\tDISK\tAGE\tSTATE\tTENANTS\n");
    for entry in layers {
        let packages = entry
            .packages
            .as_ref()
            .map_or_else(|| "?".to_owned(), |p| p.join(","));
        let tenants = if entry.tenants.is_empty() {
            "-".to_owned()
        } else {
            entry.tenants.join(",")
        };
        out.push_str(&format!(
            "{}\t{packages}\t{}\t{}\t{}\t{tenants}\n",
            entry.key,
            mib(entry.disk_bytes),
            entry.age.map_or_else(|| "?".to_owned(), age),
            state(entry.current)
        ));
    }
    out
}

fn state(current: bool) -> &'static str {
    if current {
        "current"
    } else {
        "stale"
    }
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
    fn a_build_for_the_data_image_is_a_python_shape_of_that_image() {
        let shape = build_shape(None, Some(airlock::Image::PythonData), 512, 1).unwrap();
        assert_eq!(shape.language, Language::Python);
        assert_eq!(shape.image(), airlock::Image::PythonData);
        assert_eq!(
            build_shape(Some("js"), None, 256, 2).unwrap().to_string(),
            "javascript 256 MiB 2 vCPU 2048 MiB disk"
        );
        let mismatch = build_shape(Some("raw"), Some(airlock::Image::PythonData), 512, 1);
        assert_eq!(
            mismatch.unwrap_err().invalid_field(),
            Some("image"),
            "a language the image does not run is refused"
        );
        let tiny = build_shape(None, None, 1, 1).unwrap_err();
        assert_eq!(tiny.invalid_field(), Some("memory_mib"));
    }

    #[test]
    fn sizes_are_mebibytes() {
        assert_eq!(mib(60 << 20), "60.0 MiB");
    }

    #[test]
    fn the_listing_shows_shapes_layers_and_unreadable_entries() {
        let shape = TemplateShape {
            language: Language::Python,
            image: None,
            memory_mib: 512,
            vcpus: 1,
            disk_mib: 0,
        };
        let templates = [
            TemplateEntry {
                key: "t1".into(),
                shape: Some(shape),
                packages_layer: Some("python-pkgs-ab".into()),
                disk_bytes: 2 << 20,
                age: Some(Duration::from_secs(5)),
                uses: 3,
                current: true,
            },
            TemplateEntry {
                key: "t2".into(),
                shape: None,
                packages_layer: None,
                disk_bytes: 0,
                age: None,
                uses: 0,
                current: false,
            },
        ];
        let layers = [LayerEntry {
            key: "python-pkgs-ab".into(),
            packages: Some(vec!["six==1.16.0".into(), "idna==3.7".into()]),
            disk_bytes: 1 << 20,
            age: Some(Duration::from_secs(600)),
            current: false,
            tenants: vec!["alice".into(), "bob".into()],
        }];
        let data = TemplateEntry {
            key: "t3".into(),
            shape: Some(TemplateShape::of_image(airlock::Image::PythonData)),
            ..templates[1].clone()
        };
        let data_line = listing(&[data], &[]);
        assert!(
            data_line.contains("t3\tpython-data 512 MiB 1 vCPU 2048 MiB disk\t"),
            "the shape names its image: {data_line}"
        );
        let text = listing(&templates, &layers);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "KEY\tSHAPE\tDISK\tAGE\tUSES\tSTATE");
        assert!(lines[1].starts_with("t1\tpython 512 MiB"), "{text}");
        assert_eq!(
            lines[1],
            format!("t1\t{shape} + python-pkgs-ab\t2.0 MiB\t5 s\t3\tcurrent")
        );
        assert_eq!(lines[2], "t2\t?\t0.0 MiB\t?\t0\tstale");
        assert_eq!(lines[3], "");
        assert_eq!(lines[4], "LAYER\tPACKAGES\tDISK\tAGE\tSTATE\tTENANTS");
        assert_eq!(
            lines[5],
            "python-pkgs-ab\tsix==1.16.0,idna==3.7\t1.0 MiB\t10 min\tstale\talice,bob"
        );
    }
}
