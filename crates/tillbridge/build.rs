//! Records the git commit the binary is built from (`--version`, `tillbridge_build_info`);
//! `unknown` outside a git checkout. `TILLBRIDGE_GIT_HASH` set in the build's environment wins
//! (a container build without `.git`).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=TILLBRIDGE_GIT_HASH");
    let hash = std::env::var("TILLBRIDGE_GIT_HASH")
        .ok()
        .unwrap_or_else(|| {
            let git = |args: &[&str]| {
                Command::new("git")
                    .args(args)
                    .output()
                    .ok()
                    .filter(|o| o.status.success())
                    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            };
            // Rebuilt when HEAD moves: the files git keeps it in.
            if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
                println!("cargo:rerun-if-changed={dir}/HEAD");
                println!("cargo:rerun-if-changed={dir}/refs/heads");
                println!("cargo:rerun-if-changed={dir}/packed-refs");
            }
            git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_owned())
        });
    println!("cargo:rustc-env=TILLBRIDGE_GIT_HASH={hash}");
}
