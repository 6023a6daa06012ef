//! `volt`: parse the command line, build the VM, lock the process down, run the guest.

use std::io;
use std::process::ExitCode;

use clap::Parser;

use volt::api::{serve_until_start, ApiServer, CheckedSpec, StartedVm, VmSpec};
use volt::cli::{Cli, Command, RunArgs};
use volt::error::Error;
use volt::launch::{self, LaunchOptions};
use volt::sandbox;
use volt::vm::Vm;
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
        Err(error) => {
            eprintln!("volt: error: {}", error.report());
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

fn run_kernel_command(args: volt::kernel_store::KernelArgs) -> Result<ExitCode, Error> {
    let mut stdout = io::stdout().lock();
    match volt::kernel_store::run_kernel_command(args, &mut stdout)? {
        true => Ok(ExitCode::SUCCESS),
        false => Ok(ExitCode::FAILURE), // e.g. `verify` found a corrupt kernel; it said which
    }
}

/// The VM the command line describes.
fn spec_from_flags(args: &RunArgs) -> CheckedSpec {
    CheckedSpec {
        vcpus: args.cpus,
        mem_bytes: args.mem,
        kernel: args.kernel.clone(),
        boot_args: Some(args.cmdline().to_string()),
        initrd: args.initrd.clone(),
        disks: args.disks.clone(),
        nets: args.nets.clone(),
    }
}

fn spec_from_file(path: &std::path::Path) -> Result<CheckedSpec, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::ReadConfig {
        path: path.to_path_buf(),
        source,
    })?;
    VmSpec::from_json(&text)
        .and_then(|spec| spec.check())
        .map_err(|source| Error::Config {
            path: path.to_path_buf(),
            source,
        })
}

fn run_vm(args: &RunArgs) -> Result<ExitCode, Error> {
    if args.print_seccomp {
        sandbox::describe_filters(&mut io::stdout().lock()).map_err(Error::PrintSeccomp)?;
        return Ok(ExitCode::SUCCESS);
    }
    // Before anything is opened: no descriptor from our parent may survive into the VMM.
    sandbox::close_inherited_fds()?;
    let snapshot_dir = match &args.snapshot_dir {
        Some(dir) => {
            let (fd, canonical) = volt::snapshot::dir::open_snapshot_dir(dir)?;
            sandbox::set_snapshot_dir_fd(fd);
            Some(canonical)
        }
        None => None,
    };
    let options = LaunchOptions {
        seccomp: args.seccomp_mode(),
        landlock: !args.no_landlock,
        store: args.store.clone(),
        watchdog: args.watchdog.map(std::time::Duration::from_secs),
        snapshot_dir,
        vsock: args.vsock.clone(),
        rng: !args.no_rng,
        balloon: args.balloon_config(),
        acpi: args.acpi,
    };
    let mut api = args.api_sock.as_deref().map(ApiServer::bind).transpose()?;
    let given = match &args.config_file {
        Some(path) => Some(spec_from_file(path)?),
        // With an API socket and no kernel, the VM is described through the API.
        None if api.is_some() && args.kernel.is_none() => None,
        None => Some(spec_from_flags(args)),
    };
    let StartedVm { vm, spec } = match (given, api.as_mut()) {
        (Some(spec), _) => {
            let config = launch::vm_config(&spec, &options)?;
            let vm = Vm::build(config)?;
            StartedVm { vm, spec }
        }
        (None, Some(api)) => serve_until_start(api, &options).map_err(Error::ApiLoop)?,
        (None, None) => unreachable!("without an API socket the flags describe the VM"),
    };
    let (exit, _stats) = launch::run(vm, &spec, api, &options)?;
    match exit.exit_code() {
        0 => Ok(ExitCode::SUCCESS),
        _ => Err(Error::GuestFailed(exit)),
    }
}
