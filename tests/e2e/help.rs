//! The command line helping its operator: suggestions for a mistyped subcommand, help for
//! every argument, and the completions and man pages the package installs.

use std::process::Command;

use outboxd_e2e::bin;

fn outboxd(args: &[&str]) -> std::process::Output {
    Command::new(bin("outboxd"))
        .args(args)
        .env_remove("OUTBOXD_CONFIG")
        .output()
        .unwrap()
}

#[test]
fn a_mistyped_subcommand_suggests_the_right_one() {
    let out = outboxd(&["stauts"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("'status'"), "{err}");
    let out = outboxd(&["dead", "reqeue"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("'requeue'"), "{err}");
}

#[test]
fn global_options_are_listed_once_under_their_own_heading() {
    let out = outboxd(&["dead", "requeue", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    let global = help
        .find("Global options:")
        .unwrap_or_else(|| panic!("{help}"));
    for flag in ["--config", "--database-url", "--log-format"] {
        assert_eq!(help.matches(flag).count(), 1, "{flag} in\n{help}");
        assert!(
            help.find(flag).unwrap() > global,
            "{flag} not under the heading:\n{help}"
        );
    }
}

#[test]
fn every_argument_has_help() {
    // clap_mangen writes an argument without help as its name alone; so does `--help`,
    // where a line with just the flag is followed by a blank one.
    let dir = tempfile::tempdir().unwrap();
    let out = outboxd(&["man", dir.path().to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pages: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(pages.len() > 5, "one page per subcommand");
    for sub in [
        vec!["run"],
        vec!["check-config"],
        vec!["enqueue"],
        vec!["status"],
        vec!["show"],
        vec!["pause"],
        vec!["resume"],
        vec!["dead", "list"],
        vec!["dead", "show"],
        vec!["dead", "requeue"],
        vec!["dead", "purge"],
    ] {
        let mut args = sub.clone();
        args.push("--help");
        let out = outboxd(&args);
        let help = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = help.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            let t = l.trim_start();
            // Argument lines are indented 2 or 6 spaces; their help, 10.
            let indent = l.len() - t.len();
            let is_arg = (2..=6).contains(&indent)
                && (t.starts_with('-') || t.starts_with('<') || t.starts_with('['));
            if is_arg && !l.contains("  -h, --help") {
                let next = lines.get(i + 1).copied().unwrap_or("");
                assert!(
                    !next.trim().is_empty(),
                    "{sub:?}: no help for {t:?}\n{help}"
                );
            }
        }
    }
}

#[test]
fn completions_are_generated_for_the_usual_shells() {
    for (shell, needle) in [
        ("bash", "_outboxd()"),
        ("zsh", "#compdef outboxd"),
        ("fish", "complete -c outboxd"),
    ] {
        let out = outboxd(&["completions", shell]);
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(needle), "{shell}: {text}");
        assert!(text.contains("requeue"), "{shell} completes subcommands");
    }
}
