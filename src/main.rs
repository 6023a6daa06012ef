//! `volt`: parse the command line, build the VM, lock the process down, run the guest.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;

use volt::cli::{Cli, Command, RunArgs};
use volt::kernel_store::{resolve_kernel, KernelStore};
use volt::sandbox::{self, FsAccess, SandboxConfig, ThreadKind};
use volt::vm::{BootSource, Vm, VmConfig};
use volt::{clock, terminal};

fn main() -> ExitCode {
    clock::mark_start();
    let cli = Cli::parse();
    init_logging(cli.run.log_level.as_deref());
    let result = match cli.command {
        Some(Command::Kernel(args)) => run_kernel_command(args),
        None => run_vm(&cli.run),
    };
    terminal::restore_stdin();
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("volt: error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(level: Option<&str>) {
    let env = env_logger::Env::default().default_filter_or("warn");
    let mut builder = env_logger::Builder::from_env(env);
    if let Some(level) = level {
        builder.parse_filters(level);
    }
    builder
        .format_target(false)
        .format_timestamp_micros()
        .init();
}

fn run_kernel_command(args: volt::kernel_store::KernelArgs) -> Result<ExitCode, String> {
    let mut stdout = io::stdout().lock();
    match volt::kernel_store::run_kernel_command(args, &mut stdout) {
        Ok(true) => Ok(ExitCode::SUCCESS),
        Ok(false) => Ok(ExitCode::FAILURE), // e.g. `verify` found a corrupt kernel; it said which
        Err(e) => Err(e.to_string()),
    }
}

fn run_vm(args: &RunArgs) -> Result<ExitCode, String> {
    if args.print_seccomp {
        sandbox::describe_filters(&mut io::stdout().lock()).map_err(|e| e.to_string())?;
        return Ok(ExitCode::SUCCESS);
    }
    // Before anything is opened: no descriptor from our parent may survive into the VMM.
    sandbox::close_inherited_fds().map_err(|e| e.to_string())?;
    let kernel = match args.kernel.as_deref() {
        // A plain file needs no store (and no $HOME to find one).
        Some(path) if Path::new(path).is_file() => PathBuf::from(path),
        name => {
            let store =
                KernelStore::open_or_default(args.store.clone()).map_err(|e| e.to_string())?;
            resolve_kernel(name, &store).map_err(|e| e.to_string())?
        }
    };
    let seccomp = args.seccomp_mode();
    let config = VmConfig {
        vcpus: args.cpus,
        mem_bytes: args.mem,
        boot: BootSource::Linux {
            kernel,
            initrd: args.initrd.clone(),
            cmdline: args.cmdline().to_string(),
        },
        disks: args.disks.clone(),
        nets: args.nets.clone(),
        vsock: args.vsock.clone(),
        rng: !args.no_rng,
        balloon: args.balloon_config(),
        console_out: Box::new(io::stdout()),
        console_in: Some(0),
        console_out_fd: Some(1),
        seccomp,
        acpi: args.acpi,
        watchdog: args.watchdog.map(std::time::Duration::from_secs),
    };
    let vm = Vm::build(config).map_err(|e| e.to_string())?;

    // Before Landlock: stdin and stdout get private descriptions through /proc/self/fd.
    terminal::take_over_stdin();
    // Everything is open: from here on the process may reopen only its disk images.
    let allowed: Vec<FsAccess> = args
        .disks
        .iter()
        .map(|d| FsAccess {
            path: d.path.clone(),
            writable: !d.read_only,
        })
        .collect();
    let sandbox_config = SandboxConfig {
        seccomp,
        landlock: !args.no_landlock,
    };
    sandbox::lock_down_process(&sandbox_config, &allowed).map_err(|e| e.to_string())?;

    let running = vm.start().map_err(|e| e.to_string())?;
    sandbox::apply_seccomp(ThreadKind::Main, seccomp).map_err(|e| e.to_string())?;
    let (exit, stats) = running.wait().map_err(|e| e.to_string())?;
    let _ = io::stdout().flush();
    log::info!(
        "guest ended ({exit:?}) after {} ms: {} port exits (+{} answered on the vCPU threads) and {} MMIO exits, {} console bytes",
        clock::since_start().as_millis(),
        stats.pio_exits,
        stats.pio_answered_on_vcpu,
        stats.mmio_exits,
        stats.console_bytes
    );
    match exit.exit_code() {
        0 => Ok(ExitCode::SUCCESS),
        _ => Err(format!("the guest stopped abnormally: {exit:?}")),
    }
}
