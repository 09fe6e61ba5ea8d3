//! Prints the retry schedule of the default policy as the Markdown table in
//! docs/RELIABILITY.md ("Round 2: retry schedule (defaults)").
//!
//! `cargo run -p outbox-core --example retry-schedule`

fn main() {
    let policy = outbox_core::retry::RetryPolicy::default();
    print!("{}", outbox_core::retry::schedule_table(&policy));
}
