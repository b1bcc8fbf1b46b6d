//! Rebuild when a migration is added or edited: refinery embeds the
//! `migrations/` folder at compile time, which cargo does not track by itself.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
