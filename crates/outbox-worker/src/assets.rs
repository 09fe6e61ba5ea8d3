//! What the package installs besides the binary, generated from the command line itself so
//! it cannot drift: shell completions (`outboxd completions bash`) and man pages
//! (`outboxd man DIR`). scripts/check-packaging.sh writes them under the target directory,
//! where the .deb's assets list picks them up.

use std::path::Path;

use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;

pub fn completions(shell: Shell) -> Result<(), String> {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "outboxd", &mut std::io::stdout());
    Ok(())
}

/// `outboxd.1`, and `outboxd-SUB.1` for each visible subcommand (and theirs).
pub fn man_pages(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let cmd = Cli::command().disable_help_subcommand(true);
    clap_mangen::generate_to(cmd, dir)
        .map_err(|e| format!("cannot write the man pages into {}: {e}", dir.display()))
}
