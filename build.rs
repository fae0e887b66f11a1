//! Sets `BUILD_LONG_VERSION` for `corecast --version`: the crate version followed by the
//! commit it was built from, `0.1.0 (1a2b3c4d5e6f)`, or the crate version alone when the
//! source is not a git checkout (a `cargo install` from a tarball) or git is not installed.
//!
//! Reruns only when `build.rs`, `.git/HEAD` or the ref HEAD points at changes, so an ordinary
//! rebuild does not run git. The variable's name avoids the `CORECAST_` prefix: cargo also
//! sets it for `cargo test` and `cargo run`, and the server refuses unknown `CORECAST_*`
//! variables.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let commit = git_dir(&root).and_then(|dir| {
        watch(&dir);
        commit(&root)
    });
    match commit {
        Some(hash) => println!("cargo:rustc-env=BUILD_LONG_VERSION={version} ({hash})"),
        None => println!("cargo:rustc-env=BUILD_LONG_VERSION={version}"),
    }
}

/// The git directory of a checkout rooted at `root`: `.git` itself, or the directory a `.git`
/// file names (worktrees, submodules). `None` when `root` is not a checkout, so an unrelated
/// repository above an unpacked tarball never lends its commit.
fn git_dir(root: &Path) -> Option<PathBuf> {
    let dot_git = root.join(".git");
    if dot_git.is_dir() {
        return Some(dot_git);
    }
    let text = std::fs::read_to_string(&dot_git).ok()?;
    let dir = text.strip_prefix("gitdir:")?.trim();
    Some(root.join(dir))
}

/// Asks cargo to rerun this script when HEAD moves: `HEAD` itself (a checkout of another
/// branch), the branch ref it points at (a commit), and `packed-refs` (where `git gc` moves
/// refs). Only existing files are named: cargo reruns every time for a missing one.
fn watch(dir: &Path) {
    let head = dir.join("HEAD");
    emit(&head);
    let Ok(text) = std::fs::read_to_string(&head) else {
        return;
    };
    let Some(reference) = text.strip_prefix("ref:").map(str::trim) else {
        return;
    };
    // A worktree's branch refs live in the main repository's directory.
    let common = std::fs::read_to_string(dir.join("commondir"))
        .map(|c| dir.join(c.trim()))
        .unwrap_or_else(|_| dir.to_path_buf());
    emit(&dir.join(reference));
    emit(&dir.join("packed-refs"));
    if common != dir {
        emit(&common.join(reference));
        emit(&common.join("packed-refs"));
    }
}

fn emit(path: &Path) {
    if path.is_file() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

/// `git rev-parse --short=12 HEAD` in `root`, if git runs and answers a hex hash.
fn commit(root: &Path) -> Option<String> {
    let out = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(root)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let hash = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    let hex = !hash.is_empty() && hash.bytes().all(|b| b.is_ascii_hexdigit());
    hex.then_some(hash)
}
