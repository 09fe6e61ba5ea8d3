// `sqlx::migrate!` embeds the migration files at compile time; without this a new file
// would not trigger a rebuild and could be left out of the binary.
fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
