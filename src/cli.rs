//! Command-line flags of `volt` and the parsers that turn them into a VM description.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use devices::virtio::BlockEngine;

use devices::virtio::BalloonConfig;

use crate::sandbox::SeccompMode;
use crate::vm::{DiskConfig, NetConfig, VcpuCount};

/// Kernel command line used when `--cmdline` is not given. `reboot=k` makes a guest reboot
/// go through the i8042 (which ends the VM), `panic=1` turns a panic into such a reboot; the
/// i8042/8250 options skip probing for hardware a microVM does not have.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux \
                                   i8042.nopnp i8042.dumbkbd 8250.nr_uarts=1";

/// The smallest guest that makes sense: Linux needs a few MiB just to decompress.
pub const MIN_MEM_BYTES: u64 = 16 << 20;

#[derive(Debug, Parser)]
#[command(
    name = "volt",
    version,
    about = "Volt: a small, fast, sandboxed KVM micro virtual machine monitor",
    long_about = "Boots a Linux guest under KVM with its serial console on stdout and stdin.\n\
                  The guest ends the VM by rebooting (i8042 reset, e.g. `reboot -f`) or powering off\n\
                  (ACPI S5, `poweroff`); volt then exits 0.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage the local store of guest kernels (add, list, rm, default, verify).
    Kernel(crate::kernel_store::KernelArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Guest kernel: a path to an ELF vmlinux or a bzImage, or the name of a kernel in the
    /// kernel store. Without it, the store's default kernel boots.
    #[arg(long, value_name = "PATH|NAME")]
    pub kernel: Option<String>,

    /// Number of vCPUs (1-254).
    #[arg(long, default_value = "1")]
    pub cpus: VcpuCount,

    /// Guest memory: a number with an optional K, M, G suffix (plain numbers are MiB).
    #[arg(long, default_value = "128M", value_parser = parse_mem_size, value_name = "SIZE")]
    pub mem: u64,

    /// Kernel command line, replacing the default. Volt still appends its virtio-mmio device
    /// announcements, and `root=/dev/vda` when a disk is given and no `root=` is present.
    #[arg(long, value_name = "STRING")]
    pub cmdline: Option<String>,

    /// Initial ramdisk to load next to the kernel.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,

    /// A disk image served as virtio-block (repeatable; the first is /dev/vda). `,ro` makes it
    /// read-only; `,engine=sync|uring` picks the I/O engine (default: io_uring where the
    /// kernel offers it, else sync with a log line).
    #[arg(long = "disk", value_name = "PATH[,ro][,engine=sync|uring]", value_parser = parse_disk)]
    pub disks: Vec<DiskConfig>,

    /// An existing host tap device served as virtio-net (repeatable), optionally with a MAC.
    #[arg(long = "net", value_name = "TAP[,mac=xx:xx:xx:xx:xx:xx]", value_parser = parse_net)]
    pub nets: Vec<NetConfig>,

    /// Serve a virtio-rng entropy device (the default; `--no-rng` turns it off).
    #[arg(long, overrides_with = "no_rng")]
    pub rng: bool,

    /// No virtio-rng device.
    #[arg(long)]
    pub no_rng: bool,

    /// Add a virtio-balloon. Options, comma-separated: `free-page-reporting` (on unless
    /// `free-page-reporting=off`), `stats[=SECONDS]` (memory statistics, every 5 s by
    /// default), `deflate-on-oom=off`.
    #[arg(long, value_name = "OPTIONS", num_args = 0..=1, default_missing_value = "",
          value_parser = parse_balloon)]
    pub balloon: Option<BalloonConfig>,

    /// How much memory the balloon asks the guest to give up (e.g. 64M); needs --balloon.
    #[arg(long, value_name = "SIZE", requires = "balloon", value_parser = parse_balloon_target)]
    pub balloon_target: Option<u64>,

    /// A virtio-vsock device for guest CID (3 or more) whose host side is Unix sockets: host
    /// clients connect to PATH and send `CONNECT <port>\n`; guest connections to host port P
    /// reach the listener at PATH_P.
    #[arg(long, value_name = "CID,PATH", value_parser = crate::vsock::parse_vsock)]
    pub vsock: Option<crate::vsock::VsockConfig>,

    /// Directory of the kernel store used to resolve `--kernel NAME`.
    #[arg(long, value_name = "DIR")]
    pub store: Option<PathBuf>,

    /// Log level on stderr: error, warn, info, debug or trace (default: RUST_LOG, else warn).
    #[arg(long, value_name = "LEVEL", value_parser = ["error", "warn", "info", "debug", "trace"])]
    pub log_level: Option<String>,

    /// What a syscall outside a thread's seccomp allow-list does: kill (the process, SIGSYS),
    /// errno (the call fails with EPERM), log (allowed, logged by the kernel) or off.
    #[arg(long, default_value = "kill", value_name = "MODE")]
    pub seccomp: SeccompMode,

    /// Turn the seccomp filters off (debugging only).
    #[arg(long)]
    pub no_seccomp: bool,

    /// Turn the Landlock file-system ruleset off (debugging only).
    #[arg(long)]
    pub no_landlock: bool,

    /// ACPI tables (RSDP, XSDT, FADT, MADT, DSDT) beside the MP table: `on` (default) or `off`.
    /// `off` leaves the MP table and the command-line device announcements only, e.g. to check
    /// that a kernel still finds its CPUs through the MP table.
    #[arg(long, default_value = "on", value_name = "on|off", value_parser = parse_on_off,
          action = clap::ArgAction::Set)]
    pub acpi: bool,

    /// Print every thread's seccomp allow-list and exit.
    #[arg(long)]
    pub print_seccomp: bool,

    /// Serve the HTTP API (Firecracker's resource names) on this Unix socket, created
    /// owner-only. Without --kernel or --config-file, Volt waits for `InstanceStart`.
    #[arg(long, value_name = "PATH")]
    pub api_sock: Option<PathBuf>,

    /// Directory in which `PUT /snapshot/create` may write its files (the sandbox allows
    /// creating files there and nowhere else). Without it, snapshots are refused.
    #[arg(long, value_name = "DIR")]
    pub snapshot_dir: Option<PathBuf>,

    /// Boot the VM described by this JSON file (the bodies of the API's PUTs in one object:
    /// boot-source, machine-config, drives, network-interfaces).
    #[arg(long, value_name = "PATH",
          conflicts_with_all = ["kernel", "cpus", "mem", "cmdline", "initrd", "disks", "nets"])]
    pub config_file: Option<PathBuf>,
    /// Print a report of what every thread is doing when neither a vCPU nor the event loop made
    /// progress for SECS seconds (an idle guest also makes none). `kill -USR1 <pid>` prints the
    /// same report at any time.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub watchdog: Option<u64>,
}

impl RunArgs {
    pub fn seccomp_mode(&self) -> SeccompMode {
        if self.no_seccomp {
            SeccompMode::Off
        } else {
            self.seccomp
        }
    }

    pub fn cmdline(&self) -> &str {
        self.cmdline.as_deref().unwrap_or(DEFAULT_CMDLINE)
    }

    /// The balloon as configured by `--balloon` and `--balloon-target`.
    pub fn balloon_config(&self) -> Option<BalloonConfig> {
        self.balloon.clone().map(|config| BalloonConfig {
            target_bytes: self.balloon_target.unwrap_or(0),
            ..config
        })
    }
}

/// Parses the `--balloon` options (see the flag's help).
fn parse_balloon(value: &str) -> Result<BalloonConfig, String> {
    let mut config = BalloonConfig::default();
    for option in value.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        let (name, setting) = match option.split_once('=') {
            Some((name, setting)) => (name, Some(setting)),
            None => (option, None),
        };
        let on_off = |setting: Option<&str>| match setting {
            None | Some("on") => Ok(true),
            Some("off") => Ok(false),
            Some(other) => Err(format!("--balloon {name}={other}: use on or off")),
        };
        match name {
            "free-page-reporting" => config.free_page_reporting = on_off(setting)?,
            "deflate-on-oom" => config.deflate_on_oom = on_off(setting)?,
            "stats" => {
                let seconds = match setting {
                    None => DEFAULT_BALLOON_STATS_SECONDS,
                    Some(text) => text
                        .parse::<u64>()
                        .ok()
                        .filter(|s| (1..=3600).contains(s))
                        .ok_or_else(|| {
                            format!("--balloon stats={text}: give an interval of 1 to 3600 seconds")
                        })?,
                };
                config.stats_interval = Some(Duration::from_secs(seconds));
            }
            other => {
                return Err(format!(
                    "unknown balloon option '{other}' (free-page-reporting[=off], stats[=SECONDS], deflate-on-oom=off)"
                ))
            }
        }
    }
    Ok(config)
}

/// Statistics interval of `--balloon stats`.
pub const DEFAULT_BALLOON_STATS_SECONDS: u64 = 5;

fn parse_balloon_target(value: &str) -> Result<u64, String> {
    if value.trim() == "0" {
        return Ok(0);
    }
    // Same units as --mem, without its minimum and host-size checks (checked against --mem
    // when the VM is built).
    parse_size(value, "a size (try 64M)", "balloon target")
}

/// `NUMBER[K|M|G]` (plain numbers are MiB) in bytes; `what` and `name` go into the errors.
fn parse_size(value: &str, what: &str, name: &str) -> Result<u64, String> {
    let text = value.trim();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("'{value}' is not {what}"))?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "M" | "MB" | "MIB" => 20,
        "K" | "KB" | "KIB" => 10,
        "G" | "GB" | "GIB" => 30,
        _ => {
            return Err(format!(
                "'{value}' has an unknown unit '{unit}' (use K, M or G)"
            ))
        }
    };
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("{name} '{value}' is too large"))
}

/// Parses `256M`, `1G`, `512MiB`, `65536K` or a plain number of MiB into bytes.
pub fn parse_mem_size(value: &str) -> Result<u64, String> {
    let bytes = parse_size(value, "a memory size (try 256M or 1G)", "memory size")?;
    if bytes < MIN_MEM_BYTES {
        return Err(format!(
            "memory size '{value}' is below the minimum of {} MiB",
            MIN_MEM_BYTES >> 20
        ));
    }
    if bytes % 4096 != 0 {
        return Err(format!("memory size '{value}' is not a multiple of 4 KiB"));
    }
    let host = host_memory_bytes();
    if host > 0 && bytes > host {
        return Err(format!(
            "memory size '{value}' is more than this host's {} MiB of RAM",
            host >> 20
        ));
    }
    Ok(bytes)
}

fn host_memory_bytes() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let (pages, page_size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if pages <= 0 || page_size <= 0 {
        return 0;
    }
    pages as u64 * page_size as u64
}

fn parse_on_off(value: &str) -> Result<bool, String> {
    match value {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("'{value}' is neither 'on' nor 'off'")),
    }
}

fn parse_disk(value: &str) -> Result<DiskConfig, String> {
    let mut parts = value.split(',');
    let path = parts
        .next()
        .filter(|p| !p.is_empty())
        .ok_or("--disk needs a path")?;
    let mut read_only = false;
    let mut engine = BlockEngine::Auto;
    for option in parts {
        match option {
            "ro" => read_only = true,
            "rw" => read_only = false,
            _ if option.starts_with("engine=") => engine = option["engine=".len()..].parse()?,
            other => {
                return Err(format!(
                    "unknown disk option '{other}' (ro, rw or engine=sync|uring)"
                ))
            }
        }
    }
    Ok(DiskConfig {
        path: PathBuf::from(path),
        read_only,
        engine,
    })
}

fn parse_net(value: &str) -> Result<NetConfig, String> {
    let mut parts = value.split(',');
    let tap = parts
        .next()
        .filter(|t| !t.is_empty())
        .ok_or("--net needs a tap device name")?;
    let mut mac = None;
    for option in parts {
        match option.split_once('=') {
            Some(("mac", text)) => mac = Some(parse_mac(text).map_err(|e| e.to_string())?),
            _ => {
                return Err(format!(
                    "unknown network option '{option}' (only mac=xx:xx:xx:xx:xx:xx)"
                ))
            }
        }
    }
    Ok(NetConfig {
        tap: tap.to_string(),
        mac,
    })
}

/// Why a MAC address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MacError {
    #[error("'{0}' is not a MAC address like 52:54:00:12:34:56")]
    Malformed(String),
    #[error("'{0}' is a multicast address; a network card needs a unicast MAC")]
    Multicast(String),
}

pub fn parse_mac(text: &str) -> Result<[u8; 6], MacError> {
    let malformed = || MacError::Malformed(text.to_string());
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| {
            if b.len() == 2 {
                u8::from_str_radix(b, 16).ok()
            } else {
                None
            }
        })
        .collect::<Option<_>>()
        .ok_or_else(malformed)?;
    let mac: [u8; 6] = bytes.try_into().map_err(|_| malformed())?;
    if mac[0] & 1 == 1 {
        return Err(MacError::Multicast(text.to_string()));
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("volt").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_are_one_vcpu_and_128_mib() {
        let cli = parse(&["--kernel", "vmlinux"]).unwrap();
        assert_eq!(cli.run.cpus, VcpuCount::ONE);
        assert_eq!(cli.run.mem, 128 << 20);
        assert_eq!(cli.run.cmdline(), DEFAULT_CMDLINE);
        assert!(cli
            .run
            .cmdline()
            .starts_with("console=ttyS0 reboot=k panic=1"));
        assert_eq!(cli.run.seccomp_mode(), SeccompMode::Kill);
        assert!(!cli.run.no_landlock);
    }

    #[test]
    fn memory_sizes_accept_units_and_refuse_nonsense() {
        assert_eq!(parse_mem_size("256M").unwrap(), 256 << 20);
        assert_eq!(parse_mem_size("256").unwrap(), 256 << 20);
        assert_eq!(parse_mem_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_mem_size("65536K").unwrap(), 64 << 20);
        assert_eq!(parse_mem_size("512MiB").unwrap(), 512 << 20);
        for bad in ["", "abc", "12X", "1M", "-5M", "99999999999G", "100000001K"] {
            assert!(parse_mem_size(bad).is_err(), "{bad} must be refused");
        }
        assert!(parse_mem_size("1M").unwrap_err().contains("minimum"));
    }

    #[test]
    fn vcpu_counts_outside_1_to_254_are_refused() {
        assert_eq!(parse(&["--cpus", "4"]).unwrap().run.cpus.get(), 4);
        assert_eq!(parse(&["--cpus", "254"]).unwrap().run.cpus.get(), 254);
        for bad in ["0", "255", "1000", "two"] {
            let err = parse(&["--cpus", bad]).unwrap_err().to_string();
            assert!(err.contains("--cpus"), "{bad}: {err}");
            assert!(err.contains("must be"), "{bad}: {err}");
            assert!(err.contains("1 to 254"), "{bad}: {err}");
        }
    }

    #[test]
    fn disks_and_nets_parse_their_options() {
        let cli = parse(&[
            "--disk",
            "a.img",
            "--disk",
            "b.img,ro",
            "--disk",
            "c.img,engine=sync,ro",
            "--disk",
            "d.img,engine=uring",
            "--net",
            "tap0,mac=52:54:00:12:34:56",
        ])
        .unwrap();
        assert_eq!(
            cli.run.disks,
            vec![
                DiskConfig {
                    path: "a.img".into(),
                    read_only: false,
                    engine: BlockEngine::Auto
                },
                DiskConfig {
                    path: "b.img".into(),
                    read_only: true,
                    engine: BlockEngine::Auto
                },
                DiskConfig {
                    path: "c.img".into(),
                    read_only: true,
                    engine: BlockEngine::Sync
                },
                DiskConfig {
                    path: "d.img".into(),
                    read_only: false,
                    engine: BlockEngine::Uring
                }
            ]
        );
        assert_eq!(
            cli.run.nets,
            vec![NetConfig {
                tap: "tap0".into(),
                mac: Some([0x52, 0x54, 0, 0x12, 0x34, 0x56])
            }]
        );
        assert!(parse(&["--disk", "a.img,rx"]).is_err());
        let err = parse(&["--disk", "a.img,engine=aio"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown block engine 'aio'"), "{err}");
        assert!(parse(&["--disk", ""]).is_err());
        assert!(parse(&["--net", "tap0,mac=01:00:00:00:00:01"]).is_err());
        assert!(parse(&["--net", "tap0,mac=zz"]).is_err());
        assert!(parse(&["--net", "tap0,speed=10"]).is_err());
    }

    #[test]
    fn seccomp_flags() {
        assert_eq!(
            parse(&["--no-seccomp"]).unwrap().run.seccomp_mode(),
            SeccompMode::Off
        );
        assert_eq!(
            parse(&["--seccomp", "errno"]).unwrap().run.seccomp_mode(),
            SeccompMode::Errno
        );
        assert!(parse(&["--seccomp", "maybe"]).is_err());
    }

    #[test]
    fn config_file_replaces_the_vm_flags() {
        let cli = parse(&["--config-file", "vm.json", "--api-sock", "/tmp/s"]).unwrap();
        assert_eq!(cli.run.config_file, Some(PathBuf::from("vm.json")));
        assert!(parse(&["--config-file", "vm.json", "--kernel", "k"]).is_err());
        assert!(parse(&["--config-file", "vm.json", "--cpus", "2"]).is_err());
    }

    #[test]
    fn rng_is_on_unless_turned_off() {
        assert!(!parse(&[]).unwrap().run.no_rng);
        assert!(parse(&["--no-rng"]).unwrap().run.no_rng);
        assert!(!parse(&["--no-rng", "--rng"]).unwrap().run.no_rng);
    }

    #[test]
    fn balloon_options_and_target() {
        assert_eq!(parse(&[]).unwrap().run.balloon_config(), None);
        let plain = parse(&["--balloon"]).unwrap().run.balloon_config().unwrap();
        assert!(plain.free_page_reporting, "reporting is on by default");
        assert!(plain.deflate_on_oom);
        assert_eq!(plain.stats_interval, None);
        assert_eq!(plain.target_bytes, 0);

        let cli = parse(&[
            "--balloon",
            "free-page-reporting,stats",
            "--balloon-target",
            "64M",
        ])
        .unwrap();
        let config = cli.run.balloon_config().unwrap();
        assert!(config.free_page_reporting);
        assert_eq!(config.stats_interval, Some(Duration::from_secs(5)));
        assert_eq!(config.target_bytes, 64 << 20);

        let config = parse(&["--balloon=stats=2,free-page-reporting=off,deflate-on-oom=off"])
            .unwrap()
            .run
            .balloon_config()
            .unwrap();
        assert!(!config.free_page_reporting && !config.deflate_on_oom);
        assert_eq!(config.stats_interval, Some(Duration::from_secs(2)));

        for bad in ["hint", "stats=0", "stats=x", "free-page-reporting=maybe"] {
            let err = parse(&["--balloon", bad]).unwrap_err().to_string();
            assert!(err.contains("--balloon"), "{bad}: {err}");
        }
        let err = parse(&["--balloon-target", "64M"]).unwrap_err().to_string();
        assert!(err.contains("--balloon"), "{err}");
        assert!(parse(&["--balloon", "--balloon-target", "lots"]).is_err());
    }

    #[test]
    fn acpi_is_on_unless_turned_off() {
        assert!(parse(&[]).unwrap().run.acpi);
        assert!(parse(&["--acpi", "on"]).unwrap().run.acpi);
        assert!(!parse(&["--acpi", "off"]).unwrap().run.acpi);
        for bad in ["yes", "", "OFF", "0"] {
            let err = parse(&["--acpi", bad]).unwrap_err().to_string();
            assert!(err.contains("--acpi"), "{bad}: {err}");
        }
        assert!(parse(&["--acpi"]).is_err(), "the value is required");
    }

    #[test]
    fn unknown_flags_are_errors() {
        assert!(parse(&["--kernal", "x"]).is_err());
    }
}
