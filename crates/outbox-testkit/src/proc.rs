//! The real binaries as child processes: output to a log file, killed and reaped on drop,
//! and what the kernel counted for them (CPU time, peak RSS).

use std::path::{Path, PathBuf};
use std::process::{ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{fail, Result};

/// How a child process ended, with what the kernel counted for it (wait4's rusage).
#[derive(Debug, Clone, Copy, Default)]
pub struct Exit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub user_secs: f64,
    pub sys_secs: f64,
    pub max_rss_kb: u64,
}

impl Exit {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
    pub fn cpu_secs(&self) -> f64 {
        self.user_secs + self.sys_secs
    }
}

/// A child process, killed and reaped on drop. Output goes to a log file.
pub struct Proc {
    pub pid: i32,
    pub name: String,
    pub log: PathBuf,
    child: Option<std::process::Child>,
    /// How it ended, once reaped.
    exit: Option<Exit>,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr to `log`.
    pub fn spawn(mut cmd: Command, name: &str, log: &Path) -> Result<Proc> {
        let file = std::fs::File::create(log)?;
        cmd.stdout(file.try_clone()?);
        Self::spawn_with(cmd, name, log, file)
    }

    /// Starts `cmd` with stderr to `log` and stdout as the caller set it.
    pub fn spawn_with(
        mut cmd: Command,
        name: &str,
        log: &Path,
        file: std::fs::File,
    ) -> Result<Proc> {
        cmd.stdin(Stdio::null()).stderr(file).env_remove("RUST_LOG");
        let child = cmd
            .spawn()
            .map_err(|e| format!("starting {name} ({:?}): {e}", cmd.get_program()))?;
        Ok(Proc {
            pid: child.id() as i32,
            name: name.to_string(),
            log: log.to_path_buf(),
            child: Some(child),
            exit: None,
        })
    }

    /// The child's stdout, when the caller piped it ([`Proc::spawn_with`]).
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.as_mut()?.stdout.take()
    }

    pub fn signal(&self, sig: i32) {
        if self.child.is_some() {
            // SAFETY: kill(2) on the pid of a child this handle has not reaped yet.
            unsafe {
                libc::kill(self.pid, sig);
            }
        }
    }

    pub fn alive(&mut self) -> bool {
        self.try_reap().is_none() && self.child.is_some()
    }

    fn try_reap(&mut self) -> Option<Exit> {
        self.child.as_ref()?;
        let mut status = 0;
        // SAFETY: zeroed rusage is a valid value for wait4 to fill.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: wait4 on our own child, WNOHANG.
        let r = unsafe { libc::wait4(self.pid, &mut status, libc::WNOHANG, &mut ru) };
        if r != self.pid {
            return None;
        }
        self.child = None;
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        self.exit = Some(Exit {
            code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
            signal: libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status)),
            user_secs: tv(ru.ru_utime),
            sys_secs: tv(ru.ru_stime),
            max_rss_kb: ru.ru_maxrss as u64,
        });
        self.exit
    }

    /// Waits for the process to end (polling every 2 ms).
    pub async fn wait(&mut self, timeout: Duration) -> Result<Exit> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.try_reap() {
                return Ok(e);
            }
            if let Some(e) = self.exit {
                return Ok(e);
            }
            if Instant::now() >= deadline {
                return fail(format!(
                    "{} did not finish within {timeout:?}; its log: {}",
                    self.name,
                    self.log.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// SIGKILL and reap.
    pub async fn kill(&mut self) -> Result<Exit> {
        self.signal(libc::SIGKILL);
        self.wait(Duration::from_secs(10)).await
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub async fn stop(&mut self, grace: Duration) -> Result<Exit> {
        self.signal(libc::SIGTERM);
        match self.wait(grace).await {
            Ok(e) => Ok(e),
            Err(_) => self.kill().await,
        }
    }

    /// User + system CPU seconds so far, from /proc.
    pub fn cpu_secs(&self) -> Option<f64> {
        cpu_secs(self.pid)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`.
    pub async fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log_text().contains(needle) {
                return Ok(());
            }
            if !self.alive() {
                return fail(format!(
                    "{} exited; its log:\n{}",
                    self.name,
                    tail(&self.log_text(), 20)
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        fail(format!(
            "{} did not log {needle:?} within {timeout:?}",
            self.name
        ))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.signal(libc::SIGKILL);
            let mut status = 0;
            // SAFETY: blocking wait for our own child, which was just killed.
            unsafe {
                libc::waitpid(self.pid, &mut status, 0);
            }
        }
    }
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// utime + stime of a process in seconds, from /proc/PID/stat.
pub fn cpu_secs(pid: i32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / clk_tck())
}

/// A field of /proc/PID/status in kB (VmRSS, VmHWM).
pub fn status_kb(pid: i32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
