//! The kernel store through its library API and its `volt kernel` command runner, on fake
//! kernels built here: a minimal ELF64 x86-64 `vmlinux` and a minimal `bzImage`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::thread;

use clap::{CommandFactory, Parser};
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use volt::kernel_store::{
    resolve_kernel, resolve_kernel_file, run_kernel_command, AddOptions, KernelArgs, KernelFormat,
    KernelStore, KernelStoreError,
};

/// A fake vmlinux: an ELF64 little-endian x86-64 executable header, filler derived from
/// `seed` (so different seeds hash differently) and a `linux_banner` in the middle.
fn fake_elf(release: &str, seed: u8) -> Vec<u8> {
    let mut image = vec![0u8; 64];
    image[..4].copy_from_slice(b"\x7fELF");
    image[4] = 2; // ELFCLASS64
    image[5] = 1; // little-endian
    image[6] = 1; // EV_CURRENT
    image[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    image[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    image[20..24].copy_from_slice(&1u32.to_le_bytes());
    image.extend((0..300_000u32).map(|i| i.to_le_bytes()[0].wrapping_mul(31).wrapping_add(seed)));
    let banner = format!("Linux version {release} (test@volt) (gcc 12.2.0) #1 SMP PREEMPT\n\0");
    image.extend_from_slice(banner.as_bytes());
    image.extend_from_slice(&[seed; 4096]);
    image
}

/// A fake bzImage: boot flag 0xAA55 at 0x1FE, "HdrS" at 0x202, protocol 2.15 and a
/// `kernel_version` string in the setup code.
fn fake_bzimage(version: &str, seed: u8) -> Vec<u8> {
    let mut image = vec![0u8; 0x4000];
    image[0x1FE..0x200].copy_from_slice(&0xAA55u16.to_le_bytes());
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&0x020Fu16.to_le_bytes());
    let field: u16 = 0x0400; // the string lives at field + 0x200
    image[0x20E..0x210].copy_from_slice(&field.to_le_bytes());
    let at = usize::from(field) + 0x200;
    image[at..at + version.len()].copy_from_slice(version.as_bytes());
    image.extend_from_slice(&vec![seed; 100_000]);
    image
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

struct Fixture {
    _tmp: TempDir,
    store: KernelStore,
    sources: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let sources = tmp.path().join("sources");
        fs::create_dir(&sources).unwrap();
        let store = KernelStore::open(tmp.path().join("store"));
        Fixture {
            _tmp: tmp,
            store,
            sources,
        }
    }

    fn write_source(&self, file_name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.sources.join(file_name);
        fs::write(&path, bytes).unwrap();
        path
    }

    fn add(&self, file_name: &str, bytes: &[u8], name: Option<&str>) -> PathBuf {
        let path = self.write_source(file_name, bytes);
        self.store
            .add(
                &path,
                AddOptions {
                    name: name.map(String::from),
                    ..AddOptions::default()
                },
            )
            .unwrap();
        path
    }

    fn run(&self, args: &[&str]) -> (Result<bool, KernelStoreError>, String) {
        let store = self.store.dir().to_str().unwrap();
        let argv = ["volt", "--store", store]
            .into_iter()
            .chain(args.iter().copied());
        let cli = TestCli::try_parse_from(argv).unwrap();
        let mut out = Vec::new();
        let result = run_kernel_command(cli.kernel, &mut out);
        (result, String::from_utf8(out).unwrap())
    }

    /// Everything in the store's images directory, to catch stray temp files.
    fn image_files(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.store.dir().join("images"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

/// `volt kernel` as the lead's binary would embed it.
#[derive(Parser)]
#[command(name = "volt")]
struct TestCli {
    #[command(flatten)]
    kernel: KernelArgs,
}

fn flip_byte(path: &Path, offset: usize) {
    let mut bytes = fs::read(path).unwrap();
    bytes[offset] ^= 0x01;
    fs::write(path, bytes).unwrap();
}

#[test]
fn clap_definition_is_consistent() {
    TestCli::command().debug_assert();
    // --store is global, so it also works after the subcommand.
    let cli = TestCli::try_parse_from(["volt", "list", "--store", "/s", "--json"]).unwrap();
    assert_eq!(cli.kernel.store, Some(PathBuf::from("/s")));

    let help = TestCli::command().render_long_help().to_string();
    for subcommand in ["add", "list", "rm", "default", "verify"] {
        assert!(
            help.contains(&format!("  {subcommand} ")),
            "{subcommand}: {help}"
        );
    }
    // Global arguments reach subcommands when the command is built, as parsing does.
    let mut command = TestCli::command();
    command.build();
    let add_help = command
        .find_subcommand_mut("add")
        .unwrap()
        .render_long_help()
        .to_string();
    for flag in ["--name", "--force", "--default", "--store"] {
        assert!(add_help.contains(flag), "{flag}: {add_help}");
    }
}

#[test]
fn add_records_format_version_size_hash_and_date() {
    let f = Fixture::new();
    let elf = fake_elf("6.1.0-test", 1);
    let bz = fake_bzimage("6.6.7-volt (me@box) #3 SMP Tue Jan 1\0", 2);
    let elf_source = f.add("vmlinux-test", &elf, None);
    f.add("bzImage", &bz, Some("small"));

    let kernels = f.store.list().unwrap();
    let names: Vec<&str> = kernels.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(names, ["small", "vmlinux-test"]);

    let e = &kernels[1];
    assert_eq!(e.format, KernelFormat::Elf);
    assert_eq!(e.version.as_deref(), Some("6.1.0-test"));
    assert_eq!(
        e.version_string.as_deref(),
        Some("6.1.0-test (test@volt) (gcc 12.2.0) #1 SMP PREEMPT")
    );
    assert_eq!(e.size, elf.len() as u64);
    assert_eq!(e.sha256, sha256_hex(&elf));
    assert_eq!(fs::read(f.store.image_path(e)).unwrap(), elf);
    let canonical_source = fs::canonicalize(&elf_source).unwrap();
    assert_eq!(Path::new(&e.source), canonical_source);

    let b = &kernels[0];
    assert_eq!(b.format, KernelFormat::BzImage);
    assert_eq!(b.version.as_deref(), Some("6.6.7-volt"));
    assert_eq!(b.sha256, sha256_hex(&bz));
    assert_eq!(fs::read(f.store.image_path(b)).unwrap(), bz);

    // RFC 3339 UTC: YYYY-MM-DDTHH:MM:SSZ, and this year or later.
    let added = &e.added;
    assert_eq!(added.len(), 20, "{added}");
    assert_eq!(
        (&added[4..5], &added[10..11], &added[19..]),
        ("-", "T", "Z")
    );
    assert!(added[..4].parse::<u32>().unwrap() >= 2024, "{added}");
}

#[test]
fn generic_file_name_is_named_after_the_release() {
    let f = Fixture::new();
    f.add("vmlinux", &fake_elf("6.1.0-test", 1), None);
    assert_eq!(f.store.get("6.1.0-test").unwrap().format, KernelFormat::Elf);
}

#[test]
fn list_table_and_json() {
    let f = Fixture::new();
    let (ok, out) = f.run(&["list"]);
    assert!(ok.unwrap());
    assert!(out.starts_with("No kernels in store"), "{out}");

    let alpha_image = fake_elf("6.1.0-test", 1);
    let alpha_kib = format!("{:.1}", alpha_image.len() as f64 / 1024.0);
    f.add("a.elf", &alpha_image, Some("alpha"));
    f.add("b.bz", &fake_bzimage("5.15.0 #1", 2), Some("beta"));
    f.store.set_default("beta").unwrap();

    let (ok, table) = f.run(&["list"]);
    assert!(ok.unwrap());
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "FORMAT", "VERSION", "SIZE", "ADDED", "DEFAULT"]
    );
    let alpha: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        &alpha[..5],
        ["alpha", "ELF", "6.1.0-test", &alpha_kib, "KiB"],
        "{table}"
    );
    assert_eq!(alpha.len(), 6, "alpha is not the default: {table}");
    let beta: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(&beta[..3], ["beta", "bzImage", "5.15.0"], "{table}");
    assert_eq!(beta.last(), Some(&"*"), "{table}");
    assert_eq!(lines[2].find('*'), lines[0].find("DEFAULT"), "{table}");

    let (ok, json) = f.run(&["list", "--json"]);
    assert!(ok.unwrap());
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    let listed = value.as_array().unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["name"], "alpha");
    assert_eq!(listed[0]["format"], "elf");
    assert_eq!(listed[0]["default"], false);
    assert_eq!(listed[1]["name"], "beta");
    assert_eq!(listed[1]["format"], "bzimage");
    assert_eq!(listed[1]["version"], "5.15.0");
    assert_eq!(listed[1]["default"], true);
    let path = PathBuf::from(listed[1]["path"].as_str().unwrap());
    assert_eq!(
        sha256_hex(&fs::read(path).unwrap()),
        listed[1]["sha256"].as_str().unwrap()
    );
}

#[test]
fn rm_deletes_image_and_clears_default() {
    let f = Fixture::new();
    f.add("a", &fake_elf("6.1.0", 1), Some("a"));
    f.add("b", &fake_elf("6.2.0", 2), Some("b"));
    f.store.set_default("a").unwrap();
    let a_image = f.store.image_path(&f.store.get("a").unwrap());

    let (ok, out) = f.run(&["rm", "b"]);
    assert!(ok.unwrap());
    assert_eq!(out, "Removed kernel b\n");
    assert_eq!(f.store.default().unwrap().as_deref(), Some("a"));

    let removed = f.store.remove("a").unwrap();
    assert!(removed.cleared_default);
    assert_eq!(f.store.default().unwrap(), None);
    assert!(!a_image.exists());
    assert!(f.store.list().unwrap().is_empty());
    assert!(f.image_files().is_empty(), "{:?}", f.image_files());

    let err = f.store.remove("a").unwrap_err();
    assert!(
        matches!(err, KernelStoreError::UnknownKernel { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("`a`"), "{err}");
}

#[test]
fn default_prints_and_sets() {
    let f = Fixture::new();
    f.add("k", &fake_bzimage("6.1.0", 1), Some("k"));
    let (ok, out) = f.run(&["default"]);
    assert!(ok.unwrap());
    assert_eq!(out, "No default kernel set\n");
    let (ok, out) = f.run(&["default", "k"]);
    assert!(ok.unwrap());
    assert_eq!(out, "Default kernel is now k\n");
    let (_, out) = f.run(&["default"]);
    assert_eq!(out, "k\n");

    let (err, _) = f.run(&["default", "nope"]);
    let err = err.unwrap_err();
    assert!(
        matches!(err, KernelStoreError::UnknownKernel { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("`nope`"), "{err}");
    assert_eq!(f.store.default().unwrap().as_deref(), Some("k"));
}

#[test]
fn verify_detects_a_flipped_byte() {
    let f = Fixture::new();
    f.add("good", &fake_elf("6.1.0", 1), Some("good"));
    f.add("bad", &fake_bzimage("6.1.0", 2), Some("bad"));
    let (ok, out) = f.run(&["verify"]);
    assert!(ok.unwrap(), "{out}");
    assert_eq!(out, "bad: OK\ngood: OK\n");

    let bad = f.store.get("bad").unwrap();
    flip_byte(&f.store.image_path(&bad), 0x3000);

    let reports = f.store.verify(None).unwrap();
    assert!(!reports[0].is_ok() && reports[1].is_ok(), "{reports:?}");
    let (ok, out) = f.run(&["verify"]);
    assert!(!ok.unwrap(), "a corrupt kernel must fail verify: {out}");
    assert!(out.starts_with("bad: CORRUPT"), "{out}");
    assert!(out.contains(&bad.sha256), "{out}");
    assert!(out.ends_with("good: OK\n"), "{out}");
    let (ok, _) = f.run(&["verify", "good"]);
    assert!(ok.unwrap());

    // A corrupt kernel is refused when asked for by name.
    let err = resolve_kernel(Some("bad"), &f.store).unwrap_err();
    assert!(matches!(err, KernelStoreError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("`bad` is corrupt"), "{err}");

    // A deleted image is reported too.
    fs::remove_file(f.store.image_path(&bad)).unwrap();
    let (ok, out) = f.run(&["verify", "bad"]);
    assert!(!ok.unwrap());
    assert!(out.contains("missing"), "{out}");
    let err = resolve_kernel(Some("bad"), &f.store).unwrap_err();
    assert!(
        matches!(err, KernelStoreError::MissingImage { .. }),
        "{err}"
    );

    let (err, _) = f.run(&["verify", "nope"]);
    assert!(matches!(err, Err(KernelStoreError::UnknownKernel { .. })));
}

#[test]
fn duplicate_names_fail_unless_forced() {
    let f = Fixture::new();
    let first = fake_elf("6.1.0", 1);
    let second = fake_elf("6.2.0", 2);
    f.add("first", &first, Some("k"));
    let old_image = f.store.image_path(&f.store.get("k").unwrap());
    let second_path = f.write_source("second", &second);

    let err = f
        .store
        .add(
            &second_path,
            AddOptions {
                name: Some("k".into()),
                ..AddOptions::default()
            },
        )
        .unwrap_err();
    assert!(matches!(err, KernelStoreError::NameExists { .. }), "{err}");
    assert!(err.to_string().contains("`k` already exists"), "{err}");
    assert!(err.to_string().contains("--force"), "{err}");
    assert_eq!(f.store.get("k").unwrap().sha256, sha256_hex(&first));

    // A derived name collides the same way.
    f.add("dup", &first, None);
    let (err, _) = f.run(&["add", f.sources.join("dup").to_str().unwrap()]);
    assert!(matches!(err, Err(KernelStoreError::NameExists { .. })));

    f.store.set_default("k").unwrap();
    let (ok, out) = f.run(&[
        "add",
        second_path.to_str().unwrap(),
        "--name",
        "k",
        "--force",
    ]);
    assert!(ok.unwrap());
    assert!(
        out.starts_with("Added kernel k (ELF, version 6.2.0,"),
        "{out}"
    );
    let replaced = f.store.get("k").unwrap();
    assert_eq!(replaced.sha256, sha256_hex(&second));
    assert_eq!(replaced.version.as_deref(), Some("6.2.0"));
    assert!(!old_image.exists(), "the replaced image was left behind");
    assert_eq!(f.store.default().unwrap().as_deref(), Some("k"));
    assert_eq!(f.image_files().len(), 2, "{:?}", f.image_files());
}

#[test]
fn bad_inputs_are_named_errors_and_leave_no_trace() {
    let f = Fixture::new();
    let script = f.write_source("notes.txt", b"#!/bin/sh\necho not a kernel\n");
    let err = f.store.add(&script, AddOptions::default()).unwrap_err();
    assert!(matches!(err, KernelStoreError::NotAKernel { .. }), "{err}");
    assert!(err.to_string().contains("notes.txt"), "{err}");

    let mut arm = fake_elf("6.1.0", 1);
    arm[18..20].copy_from_slice(&183u16.to_le_bytes()); // EM_AARCH64
    let arm = f.write_source("arm64-vmlinux", &arm);
    let err = f.store.add(&arm, AddOptions::default()).unwrap_err();
    assert!(err.to_string().contains("x86-64"), "{err}");

    // A real x86-64 program is ELF64 too, but not an ET_EXEC vmlinux (PIE is ET_DYN).
    let ls = Path::new("/bin/ls");
    if ls.is_file() {
        let err = f.store.add(ls, AddOptions::default()).unwrap_err();
        assert!(matches!(err, KernelStoreError::NotAKernel { .. }), "{err}");
    } else {
        eprintln!("SKIP: /bin/ls not present for the real-ELF rejection check");
    }

    let err = f.store.add(&f.sources, AddOptions::default()).unwrap_err();
    assert!(err.to_string().contains("not a regular file"), "{err}");

    let missing = f.sources.join("missing");
    let err = f.store.add(&missing, AddOptions::default()).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");

    let elf = f.write_source("ok", &fake_elf("6.1.0", 1));
    for bad_name in ["../escape", "a b", ".hidden", ""] {
        let options = AddOptions {
            name: Some(bad_name.into()),
            ..AddOptions::default()
        };
        let err = f.store.add(&elf, options).unwrap_err();
        assert!(matches!(err, KernelStoreError::InvalidName { .. }), "{err}");
    }

    assert!(f.store.list().unwrap().is_empty());
    assert!(!f.store.dir().join("images").exists() || f.image_files().is_empty());
}

#[test]
fn resolution_order() {
    let f = Fixture::new();
    let elf = fake_elf("6.1.0", 1);
    f.add("k1", &elf, Some("k1"));
    f.add("k2", &fake_bzimage("6.2.0", 2), Some("k2"));

    // No --kernel and no default.
    let err = resolve_kernel(None, &f.store).unwrap_err();
    assert!(
        matches!(err, KernelStoreError::NoDefaultKernel { .. }),
        "{err}"
    );

    // A store name resolves to its verified image.
    let k1 = f.store.resolve(Some("k1")).unwrap();
    assert_eq!(fs::read(&k1).unwrap(), elf);
    assert!(k1.starts_with(f.store.dir()));

    // The opened variant hands back the verified file itself, rewound.
    let mut opened = resolve_kernel_file(Some("k1"), &f.store).unwrap();
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut opened.file, &mut bytes).unwrap();
    assert_eq!(bytes, elf);
    assert_eq!(opened.entry.unwrap().name, "k1");

    // No --kernel: the default.
    f.store.set_default("k2").unwrap();
    let k2 = resolve_kernel(None, &f.store).unwrap();
    assert_eq!(k2, f.store.image_path(&f.store.get("k2").unwrap()));

    // A path (contains '/') wins even if it names something that is also a store name.
    let source_k1 = f.sources.join("k1");
    assert_eq!(
        resolve_kernel(Some(source_k1.to_str().unwrap()), &f.store).unwrap(),
        source_k1
    );
    // An existing file without '/' wins over a store kernel of the same name. Integration
    // tests run in the package root, where Cargo.toml exists.
    f.add("other", &fake_elf("6.3.0", 3), Some("Cargo.toml"));
    assert!(Path::new("Cargo.toml").is_file());
    assert_eq!(
        resolve_kernel(Some("Cargo.toml"), &f.store).unwrap(),
        PathBuf::from("Cargo.toml")
    );

    let err = resolve_kernel(Some("/no/such/vmlinux"), &f.store).unwrap_err();
    assert!(
        matches!(err, KernelStoreError::KernelFileNotFound { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("/no/such/vmlinux"), "{err}");
    let err = resolve_kernel(Some("nope"), &f.store).unwrap_err();
    assert!(
        matches!(err, KernelStoreError::UnresolvedKernel { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("`nope`"), "{err}");
}

#[test]
fn empty_or_missing_store_reads_as_empty() {
    let f = Fixture::new();
    assert!(!f.store.dir().exists());
    assert!(f.store.list().unwrap().is_empty());
    assert!(f.store.verify(None).unwrap().is_empty());
    assert_eq!(f.store.default().unwrap(), None);
    let (ok, out) = f.run(&["verify"]);
    assert!(ok.unwrap());
    assert!(out.starts_with("No kernels"), "{out}");
}

const THREADS: usize = 6;
const ADDS_PER_THREAD: usize = 3;

#[test]
fn concurrent_adds_from_threads_all_land() {
    let f = Fixture::new();
    let dir = f.store.dir().to_path_buf();
    let mut expected = Vec::new();
    for t in 0..THREADS {
        for i in 0..ADDS_PER_THREAD {
            let seed = u8::try_from(t * ADDS_PER_THREAD + i).unwrap();
            let bytes = if seed % 2 == 0 {
                fake_elf(&format!("6.{seed}.0"), seed)
            } else {
                fake_bzimage(&format!("5.{seed}.0"), seed)
            };
            let name = format!("t{t}-k{i}");
            expected.push((name.clone(), sha256_hex(&bytes)));
            f.write_source(&name, &bytes);
        }
    }
    let barrier = Arc::new(Barrier::new(THREADS));
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (dir, sources, barrier) = (dir.clone(), f.sources.clone(), barrier.clone());
            thread::spawn(move || {
                // Each thread has its own handle, as separate `volt` processes would.
                let store = KernelStore::open(dir);
                barrier.wait();
                for i in 0..ADDS_PER_THREAD {
                    let name = format!("t{t}-k{i}");
                    store.add(&sources.join(&name), AddOptions::default())?;
                }
                Ok::<_, KernelStoreError>(())
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap().unwrap();
    }

    let kernels = f.store.list().unwrap();
    expected.sort();
    let got: Vec<(String, String)> = kernels
        .iter()
        .map(|k| (k.name.clone(), k.sha256.clone()))
        .collect();
    assert_eq!(got, expected);
    let reports = f.store.verify(None).unwrap();
    assert!(reports.iter().all(|r| r.is_ok()), "{reports:?}");
    assert_eq!(f.image_files().len(), THREADS * ADDS_PER_THREAD);
}

const PROCESSES: usize = 4;
const CHILD_STORE_ENV: &str = "VOLT_TEST_CHILD_STORE";
const CHILD_SOURCES_ENV: &str = "VOLT_TEST_CHILD_SOURCES";
const GO_FILE: &str = "go";
const ADDS_PER_PROCESS: usize = 5;

/// Run by `concurrent_adds_from_processes` in child processes: adds every file in the
/// sources directory whose name starts with this child's prefix.
#[test]
#[ignore = "helper run in child processes by concurrent_adds_from_processes"]
fn child_adds_kernels() {
    let (Ok(store), Ok(sources), Ok(prefix)) = (
        std::env::var(CHILD_STORE_ENV),
        std::env::var(CHILD_SOURCES_ENV),
        std::env::var("VOLT_TEST_CHILD_PREFIX"),
    ) else {
        eprintln!(
            "SKIP: child_adds_kernels only runs as a child of concurrent_adds_from_processes"
        );
        return;
    };
    // Start together with the other children, so their adds really overlap.
    let go = Path::new(&sources).join(GO_FILE);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !go.exists() {
        assert!(std::time::Instant::now() < deadline, "parent never said go");
        thread::sleep(std::time::Duration::from_millis(1));
    }
    let store = KernelStore::open(store);
    let mut files: Vec<PathBuf> = fs::read_dir(sources)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with(&prefix)
        })
        .collect();
    files.sort();
    for file in files {
        store.add(&file, AddOptions::default()).unwrap();
    }
}

#[test]
fn concurrent_adds_from_processes_all_land() {
    let f = Fixture::new();
    let mut expected = Vec::new();
    for p in 0..PROCESSES {
        for i in 0..ADDS_PER_PROCESS {
            let seed = u8::try_from(100 + p * ADDS_PER_PROCESS + i).unwrap();
            let bytes = fake_elf(&format!("6.{seed}.0"), seed);
            let name = format!("p{p}-k{i}");
            expected.push((name.clone(), sha256_hex(&bytes)));
            f.write_source(&name, &bytes);
        }
    }
    let test_binary = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..PROCESSES)
        .map(|p| {
            Command::new(&test_binary)
                .args(["--ignored", "--exact", "child_adds_kernels", "--nocapture"])
                .env(CHILD_STORE_ENV, f.store.dir())
                .env(CHILD_SOURCES_ENV, &f.sources)
                .env("VOLT_TEST_CHILD_PREFIX", format!("p{p}-"))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    fs::write(f.sources.join(GO_FILE), b"").unwrap();
    let children: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    for (p, child) in children.iter().enumerate() {
        let stdout = String::from_utf8_lossy(&child.stdout);
        assert!(
            child.status.success(),
            "child {p} failed: {stdout}{}",
            String::from_utf8_lossy(&child.stderr)
        );
        assert!(
            stdout.contains("1 passed"),
            "child {p} ran nothing: {stdout}"
        );
    }

    expected.sort();
    let got: Vec<(String, String)> = f
        .store
        .list()
        .unwrap()
        .into_iter()
        .map(|k| (k.name, k.sha256))
        .collect();
    assert_eq!(got, expected);
    let reports = f.store.verify(None).unwrap();
    assert!(reports.iter().all(|r| r.is_ok()), "{reports:?}");
}

/// Real kernels named in `VOLT_TEST_KERNELS` (colon-separated paths), e.g. a distro bzImage
/// and a built vmlinux: format, version and hash must come out right.
#[test]
fn real_kernel_images() {
    let Ok(list) = std::env::var("VOLT_TEST_KERNELS") else {
        eprintln!("SKIP: set VOLT_TEST_KERNELS=/path/bzImage:/path/vmlinux to check real kernels");
        return;
    };
    let f = Fixture::new();
    for path in list.split(':').filter(|p| !p.is_empty()).map(Path::new) {
        let started = std::time::Instant::now();
        let entry = f
            .store
            .add(
                path,
                AddOptions {
                    force: true,
                    ..AddOptions::default()
                },
            )
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let elapsed = started.elapsed();
        let bytes = fs::read(path).unwrap();
        let expected_format = if bytes.starts_with(b"\x7fELF") {
            KernelFormat::Elf
        } else {
            KernelFormat::BzImage
        };
        assert_eq!(entry.format, expected_format, "{}", path.display());
        assert_eq!(entry.sha256, sha256_hex(&bytes));
        let version = entry
            .version_string
            .as_deref()
            .expect("a real kernel has a version");
        assert!(version.contains('#'), "{version}");
        eprintln!(
            "{}: {} {} ({} bytes) as `{}`, added in {elapsed:?}",
            path.display(),
            entry.format,
            version,
            entry.size,
            entry.name
        );
        let started = std::time::Instant::now();
        resolve_kernel(Some(&entry.name), &f.store).unwrap();
        eprintln!("  verified resolve in {:?}", started.elapsed());
    }
}
