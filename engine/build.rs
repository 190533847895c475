// sqlx::migrate! embeds the migration files at compile time; without this, adding a migration
// does not rebuild the engine and the binary silently keeps the old set.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
