//! `mlops-relay package`: the deployable app, unpacked and checked as Flex Consumption will see it.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_mlops-relay");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn package(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("package")
        .args(args)
        .current_dir(ROOT)
        .output()
        .expect("runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every file under `dir`, by path relative to it, with its bytes and Unix mode.
fn read_tree(dir: &Path) -> BTreeMap<String, (Vec<u8>, u32)> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, (Vec<u8>, u32)>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(base, &path, out);
            } else {
                let rel = path
                    .strip_prefix(base)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
                out.insert(rel, (fs::read(&path).unwrap(), mode));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Every file entry of the zip, by name, with its bytes and recorded Unix mode.
fn read_zip(path: &Path) -> BTreeMap<String, (Vec<u8>, u32)> {
    let mut archive = zip::ZipArchive::new(fs::File::open(path).unwrap()).unwrap();
    let mut out = BTreeMap::new();
    for i in 0..archive.len() {
        let mut file = archive.by_index(i).unwrap();
        if file.is_dir() {
            continue;
        }
        let name = file.name().unwrap().into_owned();
        let mode = file.unix_mode().expect("the zip records Unix modes") & 0o777;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).unwrap();
        out.insert(name, (bytes, mode));
    }
    out
}

fn function_names() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(Path::new(ROOT).join("function-defs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn package_writes_the_functions_layout_with_an_executable_binary_as_folder_and_zip() {
    let out_dir = tempfile::tempdir().unwrap();
    let out = package(&["--out", out_dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let zip = read_zip(&out_dir.path().join("mlops-relay.zip"));

    // host.json at the root, byte for byte the project's.
    let host = fs::read(Path::new(ROOT).join("host.json")).unwrap();
    assert_eq!(zip["host.json"].0, host);
    let host: serde_json::Value = serde_json::from_slice(&host).unwrap();
    let exe = host["customHandler"]["description"]["defaultExecutablePath"]
        .as_str()
        .unwrap();
    assert_eq!(exe, "mlops-relay");

    // function-defs/<Name>/function.json flattened to <Name>/function.json, every one of them.
    let names = function_names();
    assert!(names.len() >= 5, "{names:?}");
    for name in &names {
        let source = fs::read(
            Path::new(ROOT)
                .join("function-defs")
                .join(name)
                .join("function.json"),
        )
        .unwrap();
        let entry = format!("{name}/function.json");
        assert_eq!(zip.get(&entry).map(|e| &e.0), Some(&source), "{entry}");
        assert_eq!(zip[&entry].1, 0o644, "{entry}");
    }

    // The binary at the root under the host's name, executable, and the very binary that ran.
    let (binary, mode) = &zip[exe];
    assert_eq!(*mode, 0o755, "mode {mode:o}");
    assert_eq!(binary, &fs::read(BIN).unwrap());
    assert_eq!(&binary[..4], b"\x7fELF");

    // policy.toml: the example policy, and valid.
    let (policy, _) = &zip["policy.toml"];
    assert_eq!(
        policy,
        &fs::read(Path::new(ROOT).join("examples/policy.toml")).unwrap()
    );
    assert!(mlops_relay::policy::Policy::parse(std::str::from_utf8(policy).unwrap()).is_ok());

    // Nothing else.
    let mut expected: Vec<String> = names.iter().map(|n| format!("{n}/function.json")).collect();
    expected.extend(["host.json", "mlops-relay", "policy.toml"].map(String::from));
    expected.sort();
    assert_eq!(zip.keys().cloned().collect::<Vec<_>>(), expected);

    // The folder is the zip, modes included.
    assert_eq!(read_tree(&out_dir.path().join("app")), zip);

    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!("{} function(s)", names.len())),
        "{stdout}"
    );
    assert!(stdout.contains("needs glibc"), "{stdout}");
}

#[test]
fn package_ships_the_given_policy_and_binary_and_is_reproducible() {
    let work = tempfile::tempdir().unwrap();
    let policy = work.path().join("mine.toml");
    let example = fs::read_to_string(Path::new(ROOT).join("examples/policy.toml")).unwrap();
    fs::write(&policy, format!("# ours\n{example}")).unwrap();
    // A minimal Linux x86-64 ELF header is all `package` checks; it keeps this test's two builds fast.
    let binary = work.path().join("tiny-elf");
    let mut elf = vec![0u8; 64];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2; // 64-bit
    elf[5] = 1; // little-endian
    elf[18] = 0x3e; // x86-64
    fs::write(&binary, &elf).unwrap();

    let build = |dir: &Path| {
        let out = package(&[
            "--out",
            dir.to_str().unwrap(),
            "--policy",
            policy.to_str().unwrap(),
            "--binary",
            binary.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        fs::read(dir.join("mlops-relay.zip")).unwrap()
    };
    let first = build(&work.path().join("a"));
    let second = build(&work.path().join("b"));
    assert_eq!(first, second, "same inputs, same zip bytes");

    let zip = read_zip(&work.path().join("a/mlops-relay.zip"));
    assert!(text(&zip["policy.toml"].0).starts_with("# ours\n"));
    assert_eq!(zip["mlops-relay"].0, elf);
    assert_eq!(zip["mlops-relay"].1, 0o755);
}

#[test]
fn package_refuses_an_invalid_policy_and_a_binary_flex_consumption_cannot_run() {
    let work = tempfile::tempdir().unwrap();
    let out_dir = work.path().join("out");

    let bad_policy = work.path().join("bad.toml");
    fs::write(&bad_policy, "promotion = 3\n").unwrap();
    let out = package(&[
        "--out",
        out_dir.to_str().unwrap(),
        "--policy",
        bad_policy.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("bad.toml"),
        "{}",
        text(&out.stderr)
    );

    let script = work.path().join("handler.sh");
    fs::write(&script, "#!/bin/sh\necho not a Linux x86-64 binary\n").unwrap();
    let out = package(&[
        "--out",
        out_dir.to_str().unwrap(),
        "--binary",
        script.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not an ELF"),
        "{}",
        text(&out.stderr)
    );

    assert!(
        !out_dir.join("mlops-relay.zip").exists(),
        "nothing is written when a check fails"
    );
}
