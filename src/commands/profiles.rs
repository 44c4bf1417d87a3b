//! `profiles [NAME]`: lists the meter profiles (built-in, plus the user directory of the
//! configuration when one is readable) or prints one.

use std::path::Path;

use super::Exit;
use crate::profile::Registry;

/// Built-in profiles, plus those of `profiles_dir` when the configuration can be read.
fn registry(config: &Path) -> Registry {
    if config.exists() {
        if let Ok(c) = crate::config::Config::load(config) {
            return c.profiles;
        }
    }
    Registry::builtin()
}

pub fn run(config: &Path, name: Option<&str>, toml: bool) -> Exit {
    let reg = registry(config);
    match name {
        None => {
            println!(
                "{:<24} {:<9} {:<8} description",
                "profile", "origin", "verified"
            );
            for p in reg.iter() {
                println!(
                    "{:<24} {:<9} {:<8} {}",
                    p.name,
                    if p.builtin { "built-in" } else { "user" },
                    if p.verified { "yes" } else { "NO" },
                    p.description
                );
            }
            println!("\n`profiles NAME` prints one profile's quantities; `--toml` its file.");
            Exit::Ok
        }
        Some(n) => match reg.get(n) {
            Some(p) if toml => {
                print!("{}", p.toml_source());
                Exit::Ok
            }
            Some(p) => {
                print!("{}", p.render());
                Exit::Ok
            }
            None => {
                eprintln!(
                    "error: no profile named \"{n}\"; known: {}",
                    reg.names().join(", ")
                );
                Exit::Invalid
            }
        },
    }
}
