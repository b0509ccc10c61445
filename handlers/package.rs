//! `mlops-relay package`: assemble the deployable Function App, as a folder and as the zip Flex Consumption's
//! one-deploy takes.
//!
//! The layout is the Functions custom-handler layout: `host.json` at the root, one folder per function holding its
//! `function.json` (flattened from `function-defs/<Name>/function.json`), the handler executable at the root under
//! the name `host.json` gives it (`customHandler.description.defaultExecutablePath`), and `policy.toml`, which the
//! app reads unless `RELAY_POLICY` says otherwise. Everything is checked before anything is written: the host file
//! and every `function.json` must be JSON, the policy must pass `policy check`, and the binary must be a Linux
//! x86-64 executable, because that is all Flex Consumption runs.
//!
//! The zip is reproducible: entries in name order, fixed timestamps, Unix modes recorded (0755 for the binary,
//! 0644 for the rest) so the host can execute the handler after extraction.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use zip::CompressionMethod;
use zip::write::{SimpleFileOptions, ZipWriter};

use crate::policy::Policy;

/// The zip's file name inside the output directory.
pub const ZIP_NAME: &str = "mlops-relay.zip";
/// The folder's name inside the output directory.
pub const APP_DIR: &str = "app";
/// The policy's file name in the package (the default of `RELAY_POLICY`).
pub const POLICY_NAME: &str = "policy.toml";

/// What to package.
#[derive(Debug, Clone)]
pub struct Options {
    /// The project root: `host.json` and `function-defs/` are read from here.
    pub root: PathBuf,
    /// Where `app/` and the zip are written (created if missing; an existing `app/` and zip are replaced).
    pub out: PathBuf,
    /// The handler executable to ship.
    pub binary: PathBuf,
    /// The policy file to ship as `policy.toml`.
    pub policy: PathBuf,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Package {
    /// The package as a folder.
    pub app_dir: PathBuf,
    /// The package as a zip.
    pub zip: PathBuf,
    /// The executable's name at the package root.
    pub executable: String,
    /// The functions, by name.
    pub functions: Vec<String>,
    /// The policy's hash, as `policy check` prints it.
    pub policy_hash: String,
    /// The newest glibc symbol version the binary needs (`None`: it needs none, e.g. a static musl build).
    pub glibc: Option<(u32, u32)>,
}

/// Why the package could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The project's Functions files are missing or malformed.
    #[error("{0}")]
    Layout(String),
    /// The policy does not pass `policy check`.
    #[error("{path}: policy has {} error(s):\n{}", .errors.len(), .errors.join("\n"))]
    Policy {
        /// The policy file.
        path: PathBuf,
        /// One line per diagnostic, with line and column.
        errors: Vec<String>,
    },
    /// The binary is not something Flex Consumption can run.
    #[error("{path}: {message}")]
    Binary {
        /// The binary.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
    /// Writing the zip failed.
    #[error("writing the zip: {0}")]
    Zip(#[from] zip::result::ZipError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PackageError + '_ {
    move |source| PackageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One file of the package: its path inside the package, its bytes, its Unix mode.
struct Entry {
    bytes: Vec<u8>,
    mode: u32,
}

/// Checks the inputs, then writes `out/app/` and `out/mlops-relay.zip`.
pub fn build(opts: &Options) -> Result<Package, PackageError> {
    let mut entries: BTreeMap<String, Entry> = BTreeMap::new();

    let host_path = opts.root.join("host.json");
    let host_bytes = fs::read(&host_path).map_err(io(&host_path))?;
    let host: serde_json::Value = serde_json::from_slice(&host_bytes)
        .map_err(|e| PackageError::Layout(format!("{}: not JSON: {e}", host_path.display())))?;
    let executable = executable_name(&host).ok_or_else(|| {
        PackageError::Layout(format!(
            "{}: customHandler.description.defaultExecutablePath is missing or not a plain file name",
            host_path.display()
        ))
    })?;
    entries.insert(
        "host.json".into(),
        Entry {
            bytes: host_bytes,
            mode: 0o644,
        },
    );

    let functions = function_definitions(&opts.root.join("function-defs"))?;
    for (name, bytes) in &functions {
        entries.insert(
            format!("{name}/function.json"),
            Entry {
                bytes: bytes.clone(),
                mode: 0o644,
            },
        );
    }

    let policy_text = fs::read_to_string(&opts.policy).map_err(io(&opts.policy))?;
    let policy = Policy::parse(&policy_text).map_err(|diagnostics| PackageError::Policy {
        path: opts.policy.clone(),
        errors: diagnostics
            .iter()
            .map(|d| format!("{}:{d}", opts.policy.display()))
            .collect(),
    })?;
    entries.insert(
        POLICY_NAME.into(),
        Entry {
            bytes: policy_text.into_bytes(),
            mode: 0o644,
        },
    );

    let binary = fs::read(&opts.binary).map_err(io(&opts.binary))?;
    check_linux_x86_64(&binary).map_err(|message| PackageError::Binary {
        path: opts.binary.clone(),
        message,
    })?;
    let glibc = newest_glibc(&binary);
    if entries.contains_key(&executable) {
        return Err(PackageError::Layout(format!(
            "the executable name `{executable}` collides with another file of the package"
        )));
    }
    entries.insert(
        executable.clone(),
        Entry {
            bytes: binary,
            mode: 0o755,
        },
    );

    fs::create_dir_all(&opts.out).map_err(io(&opts.out))?;
    let app_dir = opts.out.join(APP_DIR);
    let zip_path = opts.out.join(ZIP_NAME);
    if app_dir.exists() {
        fs::remove_dir_all(&app_dir).map_err(io(&app_dir))?;
    }
    write_folder(&app_dir, &entries)?;
    write_zip(&zip_path, &entries)?;

    Ok(Package {
        app_dir,
        zip: zip_path,
        executable,
        functions: functions.into_keys().collect(),
        policy_hash: policy.hash.to_string(),
        glibc,
    })
}

/// `customHandler.description.defaultExecutablePath`, if it names a file in the app root.
fn executable_name(host: &serde_json::Value) -> Option<String> {
    let path = host
        .pointer("/customHandler/description/defaultExecutablePath")?
        .as_str()?;
    let plain = !path.is_empty()
        && !path.contains(['/', '\\'])
        && path != "."
        && path != ".."
        && !path.ends_with(".json");
    plain.then(|| path.to_string())
}

/// Every `function-defs/<Name>/function.json`, by name, each checked to be JSON with a `bindings` array.
fn function_definitions(dir: &Path) -> Result<BTreeMap<String, Vec<u8>>, PackageError> {
    let mut out = BTreeMap::new();
    for entry in fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let file = path.join("function.json");
        let bytes = fs::read(&file).map_err(io(&file))?;
        let json: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| PackageError::Layout(format!("{}: not JSON: {e}", file.display())))?;
        if !json.get("bindings").is_some_and(|b| b.is_array()) {
            return Err(PackageError::Layout(format!(
                "{}: has no `bindings` array",
                file.display()
            )));
        }
        out.insert(name, bytes);
    }
    if out.is_empty() {
        return Err(PackageError::Layout(format!(
            "{}: no function folders",
            dir.display()
        )));
    }
    Ok(out)
}

/// Flex Consumption runs Linux on x86-64 only: the binary must be a 64-bit little-endian ELF for x86-64.
fn check_linux_x86_64(bytes: &[u8]) -> Result<(), String> {
    const HINT: &str = "Flex Consumption runs Linux x86-64 binaries only; build one with `cargo build --release --locked` on Linux x86-64 (or --target x86_64-unknown-linux-musl) and pass it with --binary";
    if bytes.len() < 20 || &bytes[..4] != b"\x7fELF" {
        return Err(format!("not an ELF executable. {HINT}"));
    }
    if bytes[4] != 2 || bytes[5] != 1 {
        return Err(format!("not a 64-bit little-endian ELF. {HINT}"));
    }
    let machine = u16::from_le_bytes([bytes[18], bytes[19]]);
    if machine != 0x3e {
        return Err(format!(
            "built for ELF machine {machine:#x}, not x86-64. {HINT}"
        ));
    }
    Ok(())
}

/// The newest `GLIBC_2.N` symbol version the binary's dynamic string table names: the oldest glibc it runs on.
/// `None` when it has no dynamic string table (a static build) or the section table cannot be read.
fn newest_glibc(elf: &[u8]) -> Option<(u32, u32)> {
    let dynstr = section(elf, ".dynstr")?;
    const TAG: &[u8] = b"GLIBC_2.";
    dynstr
        .split(|&b| b == 0)
        .filter_map(|name| name.strip_prefix(TAG))
        .filter_map(|rest| {
            let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
            std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
        })
        .max()
        .map(|minor| (2, minor))
}

/// The bytes of the named section of a 64-bit little-endian ELF file.
fn section<'a>(elf: &'a [u8], wanted: &str) -> Option<&'a [u8]> {
    let field = |at: usize, len: usize| elf.get(at..at.checked_add(len)?);
    let u16_at = |at: usize| {
        Some(usize::from(u16::from_le_bytes(
            field(at, 2)?.try_into().ok()?,
        )))
    };
    let u32_at =
        |at: usize| usize::try_from(u32::from_le_bytes(field(at, 4)?.try_into().ok()?)).ok();
    let u64_at =
        |at: usize| usize::try_from(u64::from_le_bytes(field(at, 8)?.try_into().ok()?)).ok();
    // ELF64 header: e_shoff at 0x28, e_shentsize at 0x3a, e_shnum at 0x3c, e_shstrndx at 0x3e.
    let (table, entry_size, count, names_index) =
        (u64_at(0x28)?, u16_at(0x3a)?, u16_at(0x3c)?, u16_at(0x3e)?);
    let header = |i: usize| table.checked_add(i.checked_mul(entry_size)?);
    // Section header: sh_name at 0, sh_offset at 0x18, sh_size at 0x20.
    let bytes_of = |h: usize| field(u64_at(h.checked_add(0x18)?)?, u64_at(h.checked_add(0x20)?)?);
    let names = bytes_of(header(names_index)?)?;
    (0..count).find_map(|i| {
        let h = header(i)?;
        let name = names.get(u32_at(h)?..)?.split(|&b| b == 0).next()?;
        if name == wanted.as_bytes() {
            bytes_of(h)
        } else {
            None
        }
    })
}

fn write_folder(app_dir: &Path, entries: &BTreeMap<String, Entry>) -> Result<(), PackageError> {
    for (name, entry) in entries {
        let path = app_dir.join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io(parent))?;
        }
        fs::write(&path, &entry.bytes).map_err(io(&path))?;
        set_mode(&path, entry.mode)?;
    }
    Ok(())
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> Result<(), PackageError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io(path))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> Result<(), PackageError> {
    // The zip records the mode; the folder on a non-Unix file system cannot.
    Ok(())
}

fn write_zip(path: &Path, entries: &BTreeMap<String, Entry>) -> Result<(), PackageError> {
    let partial = path.with_extension("zip.partial");
    let file = fs::File::create(&partial).map_err(io(&partial))?;
    let mut zip = ZipWriter::new(file);
    for (name, entry) in entries {
        let options = SimpleFileOptions::default()
            .compression_method(CompressionMethod::Deflated)
            .unix_permissions(entry.mode);
        zip.start_file(name.as_str(), options)?;
        zip.write_all(&entry.bytes).map_err(io(path))?;
    }
    zip.finish()?.sync_all().map_err(io(&partial))?;
    fs::rename(&partial, path).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_executable_name_comes_from_host_json_and_must_be_a_plain_file() {
        let host = |p: &str| serde_json::json!({ "customHandler": { "description": { "defaultExecutablePath": p } } });
        assert_eq!(
            executable_name(&host("mlops-relay")).as_deref(),
            Some("mlops-relay")
        );
        assert_eq!(executable_name(&host("bin/mlops-relay")), None);
        assert_eq!(executable_name(&host("")), None);
        assert_eq!(executable_name(&serde_json::json!({})), None);
    }

    #[test]
    fn only_linux_x86_64_elf_binaries_are_accepted() {
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[18] = 0x3e;
        assert!(check_linux_x86_64(&elf).is_ok());
        elf[18] = 0xb7; // aarch64
        assert!(check_linux_x86_64(&elf).unwrap_err().contains("not x86-64"));
        assert!(
            check_linux_x86_64(b"MZ\x90\0 a Windows executable")
                .unwrap_err()
                .contains("not an ELF")
        );
    }

    #[test]
    fn the_newest_glibc_version_in_the_dynamic_string_table_is_reported() {
        let this = fs::read(std::env::current_exe().unwrap()).unwrap();
        if cfg!(target_env = "gnu") {
            let (major, minor) = newest_glibc(&this).expect("a glibc build names glibc versions");
            assert_eq!(major, 2);
            assert!((17..100).contains(&minor), "GLIBC_2.{minor}");
        }
        assert_eq!(newest_glibc(b"\x7fELF and nothing else"), None);
    }
}
