//! The `volt kernel ...` subcommands: clap definitions and their text / JSON output.

use std::io::Write;
use std::path::PathBuf;

use serde::Serialize;

use super::{AddOptions, KernelEntry, KernelStore, KernelStoreError, VerifyStatus};

/// Arguments of `volt kernel`.
#[derive(Clone, Debug, clap::Args)]
pub struct KernelArgs {
    /// Kernel store directory [default: $VOLT_KERNEL_STORE, else $XDG_DATA_HOME/volt/kernels,
    /// else ~/.local/share/volt/kernels]
    #[arg(long, global = true, value_name = "DIR")]
    pub store: Option<PathBuf>,

    #[command(subcommand)]
    pub command: KernelCommand,
}

/// The `volt kernel` subcommands.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum KernelCommand {
    /// Copy a vmlinux (ELF64 x86-64) or bzImage into the store
    Add {
        /// The kernel image to copy
        path: PathBuf,
        /// Store name [default: the file name, or the kernel release for generic file names]
        #[arg(long)]
        name: Option<String>,
        /// Replace an existing kernel of the same name
        #[arg(long)]
        force: bool,
        /// Also make it the default kernel
        #[arg(long = "default")]
        make_default: bool,
    },
    /// List the stored kernels
    #[command(alias = "ls")]
    List {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Remove a kernel (removing the default leaves no default)
    #[command(alias = "remove")]
    Rm {
        /// Store name of the kernel
        name: String,
    },
    /// Print the default kernel, or set it to NAME
    Default {
        /// Store name of the kernel to use when --kernel is not given
        name: Option<String>,
    },
    /// Re-hash stored kernels and report OK or CORRUPT for each
    Verify {
        /// Only this kernel
        name: Option<String>,
    },
}

/// Runs one `volt kernel` subcommand, writing its report to `out`.
///
/// Returns `Ok(false)` when the command ran but found a problem the exit status must show
/// (a corrupt, missing or unreadable kernel in `verify`); the caller exits non-zero then.
pub fn run_kernel_command(
    args: KernelArgs,
    out: &mut impl Write,
) -> Result<bool, KernelStoreError> {
    let store = KernelStore::open_or_default(args.store)?;
    let stdout = |e| KernelStoreError::io("cannot write to", "standard output")(e);
    match args.command {
        KernelCommand::Add {
            path,
            name,
            force,
            make_default,
        } => {
            let entry = store.add(
                &path,
                AddOptions {
                    name,
                    force,
                    make_default,
                },
            )?;
            writeln!(
                out,
                "Added kernel {} ({}, version {}, {}, sha256 {}){}",
                entry.name,
                entry.format,
                entry.version.as_deref().unwrap_or("unknown"),
                human_size(entry.size),
                entry.sha256,
                if make_default { " as the default" } else { "" }
            )
            .map_err(stdout)?;
        }
        KernelCommand::List { json } => {
            let meta = store.snapshot()?;
            let text = if json {
                list_json(&store, &meta.kernels, meta.default.as_deref())
            } else if meta.kernels.is_empty() {
                format!("No kernels in store {}\n", store.dir().display())
            } else {
                list_table(&meta.kernels, meta.default.as_deref())
            };
            out.write_all(text.as_bytes()).map_err(stdout)?;
        }
        KernelCommand::Rm { name } => {
            let removed = store.remove(&name)?;
            let note = if removed.cleared_default {
                "; it was the default, so no default kernel is set now"
            } else {
                ""
            };
            writeln!(out, "Removed kernel {name}{note}").map_err(stdout)?;
        }
        KernelCommand::Default { name: Some(name) } => {
            store.set_default(&name)?;
            writeln!(out, "Default kernel is now {name}").map_err(stdout)?;
        }
        KernelCommand::Default { name: None } => match store.default()? {
            Some(name) => writeln!(out, "{name}").map_err(stdout)?,
            None => writeln!(out, "No default kernel set").map_err(stdout)?,
        },
        KernelCommand::Verify { name } => {
            let reports = store.verify(name.as_deref())?;
            if reports.is_empty() {
                writeln!(out, "No kernels in store {}", store.dir().display()).map_err(stdout)?;
            }
            for report in &reports {
                let line = match &report.status {
                    VerifyStatus::Ok => "OK".to_string(),
                    VerifyStatus::Corrupt {
                        actual_sha256,
                        actual_size,
                    } => format!(
                        "CORRUPT (sha256 {actual_sha256}, {actual_size} bytes; expected {})",
                        report.expected_sha256
                    ),
                    VerifyStatus::Missing => {
                        format!("CORRUPT (image {} is missing)", report.path.display())
                    }
                    VerifyStatus::Unreadable { error } => {
                        format!("CORRUPT (cannot read {}: {error})", report.path.display())
                    }
                };
                writeln!(out, "{}: {line}", report.name).map_err(stdout)?;
            }
            return Ok(reports.iter().all(|r| r.is_ok()));
        }
    }
    Ok(true)
}

/// Sizes in binary units with one decimal, e.g. `12.3 MiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// An aligned table with a header row; the last column is not padded.
fn list_table(kernels: &[KernelEntry], default: Option<&str>) -> String {
    let header = ["NAME", "FORMAT", "VERSION", "SIZE", "ADDED", "DEFAULT"].map(String::from);
    let rows: Vec<[String; 6]> = kernels
        .iter()
        .map(|k| {
            [
                k.name.clone(),
                k.format.to_string(),
                k.version.clone().unwrap_or_else(|| "-".into()),
                human_size(k.size),
                k.added.clone(),
                if default == Some(k.name.as_str()) {
                    "*"
                } else {
                    ""
                }
                .into(),
            ]
        })
        .collect();
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut text = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(&format!("{cell:<width$}", width = widths[i]));
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

#[derive(Serialize)]
struct ListedKernel<'a> {
    #[serde(flatten)]
    entry: &'a KernelEntry,
    path: PathBuf,
    default: bool,
}

/// A JSON array of the entries, each with its image path and a `default` flag.
fn list_json(store: &KernelStore, kernels: &[KernelEntry], default: Option<&str>) -> String {
    let listed: Vec<ListedKernel> = kernels
        .iter()
        .map(|entry| ListedKernel {
            entry,
            path: store.image_path(entry),
            default: default == Some(entry.name.as_str()),
        })
        .collect();
    let mut text = serde_json::to_string_pretty(&listed).expect("entries serialize to JSON");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel_store::KernelFormat;

    fn entry(name: &str, version: Option<&str>, size: u64) -> KernelEntry {
        KernelEntry {
            name: name.into(),
            file: format!("{name}-0123456789abcdef"),
            format: KernelFormat::BzImage,
            version: version.map(String::from),
            version_string: None,
            size,
            sha256: "ab".repeat(32),
            added: "2026-11-25T13:46:38Z".into(),
            source: "/src".into(),
        }
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(12 * 1024 * 1024 + 300 * 1024), "12.3 MiB");
        assert_eq!(human_size(3 << 30), "3.0 GiB");
    }

    #[test]
    fn table_columns_line_up_and_mark_default() {
        let kernels = [
            entry("a", Some("6.1.0-long-release"), 10),
            entry("much-longer-name", None, 5 << 20),
        ];
        let table = list_table(&kernels, Some("much-longer-name"));
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        let columns = ["NAME", "FORMAT", "VERSION", "SIZE", "ADDED", "DEFAULT"];
        let starts: Vec<usize> = columns.iter().map(|c| lines[0].find(c).unwrap()).collect();
        // Every cell starts where its header starts.
        for (line, cells) in lines[1..].iter().zip([
            [
                "a",
                "bzImage",
                "6.1.0-long-release",
                "10 B",
                "2026-11-25T13:46:38Z",
            ],
            [
                "much-longer-name",
                "bzImage",
                "-",
                "5.0 MiB",
                "2026-11-25T13:46:38Z",
            ],
        ]) {
            for (cell, start) in cells.iter().zip(&starts) {
                assert_eq!(&line[*start..*start + cell.len()], *cell, "{table}");
            }
        }
        assert!(!lines[1].ends_with('*'), "{table}");
        assert_eq!(lines[2].find('*'), Some(starts[5]), "{table}");
    }
}
