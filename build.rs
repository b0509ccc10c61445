//! Links the `mlops-relay` binary as a position-dependent executable on Linux: the code is still
//! position-independent, but the dynamic loader no longer has to relocate (and so privately copy) every page of
//! vtables and other pointer tables at start-up, which is most of an idle process's anonymous memory.

fn main() {
    let target = std::env::var("TARGET").unwrap_or_default();
    if target.contains("-linux-gnu") {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
