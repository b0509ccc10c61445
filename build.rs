//! Link settings for the `mlops-relay` binary on Linux, both to keep an idle process small:
//!
//! - a position-dependent executable: the code is still position-independent, but the dynamic loader no
//!   longer has to relocate (and so privately copy) every page of vtables and other pointer tables at
//!   start-up, which is most of an idle process's anonymous memory;
//! - the functions start-up runs laid out next to each other (`startup.order`, made by
//!   `.tools/startup-order.sh`). The kernel maps the code of a binary 64 KiB around each page it runs
//!   (fault-around), so start-up's ~1,400 functions scattered over 12 MiB of code left most of it resident in
//!   an idle process. The names carry hashes of the build (crate metadata, and the dependency features it
//!   resolved), so the file fits builds made as the shipped one is (`cargo build --profile dist` without
//!   examples: `make package`, the runtime benchmark); another build (release, or one that also builds
//!   examples and so unifies dev-dependency features) finds part of it, and names not found are skipped. This
//!   needs LLD, which links x86_64-unknown-linux-gnu since Rust 1.90 (GNU ld has no such option);
//!   `MLOPS_RELAY_NO_SYMBOL_ORDER=1`, or no such file, links without it.

use std::path::Path;

fn main() {
    let target = std::env::var("TARGET").unwrap_or_default();
    if target.contains("-linux-gnu") {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let order = Path::new(&manifest).join("startup.order");
    println!("cargo:rerun-if-changed=startup.order");
    if target == "x86_64-unknown-linux-gnu"
        && std::env::var_os("MLOPS_RELAY_NO_SYMBOL_ORDER").is_none()
        && order.exists()
    {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        // Names the binary no longer has (inlined or renamed since the file was made) are skipped quietly.
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
    println!("cargo:rerun-if-env-changed=MLOPS_RELAY_NO_SYMBOL_ORDER");
    println!("cargo:rerun-if-changed=build.rs");
}
