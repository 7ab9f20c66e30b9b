//! Builds the plugins the host ships with (today: `customer-prefix`, which
//! the session-audit family installs by default) for `wasm32-wasip2`, so the
//! binary embeds them. Like wasmtime's test-programs, it runs a nested cargo
//! with a target directory of its own.

use std::path::{Path, PathBuf};
use std::process::Command;

const SHIPPED: [&str; 1] = ["customer-prefix"];

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let root = manifest.parent().expect("host/ is in the workspace").to_path_buf();
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it"));
    // The workspace manifest and lock decide the plugins' dependencies too.
    for dir in ["wit", "guest-sdk/src", "guest-sdk/Cargo.toml", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    for name in SHIPPED {
        println!("cargo:rerun-if-changed={}", root.join("plugins").join(name).display());
    }
    ensure_wasm_target();
    let target_dir = out.join("shipped-plugins");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .args(["--config", "profile.release.debug=false", "--config", "profile.release.strip=true"])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET");
    for name in SHIPPED {
        cmd.args(["-p", name]);
    }
    let status = cmd.status().expect("cargo runs");
    assert!(status.success(), "building the shipped plugins for wasm32-wasip2 failed");
    for name in SHIPPED {
        let file = format!("{}.wasm", name.replace('-', "_"));
        copy(&target_dir.join("wasm32-wasip2/release").join(&file), &out.join(&file));
    }
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("cannot copy {}: {e}", from.display()));
}

/// `rust-toolchain.toml` names the target, but machines with
/// `RUSTUP_AUTO_INSTALL=0` do not install it on their own.
fn ensure_wasm_target() {
    let installed = Command::new("rustup").args(["target", "list", "--installed"]).output();
    if let Ok(out) = installed {
        if !String::from_utf8_lossy(&out.stdout).lines().any(|l| l.trim() == "wasm32-wasip2") {
            let _ = Command::new("rustup").args(["target", "add", "wasm32-wasip2"]).status();
        }
    }
}
