//! Running commands with their command line echoed and failures explained.

use std::{
    ffi::OsStr,
    process::{Command, Output},
};

use anyhow::{bail, Context as _};

pub fn step(what: &str) {
    println!("\n==> {what}");
}

pub fn note(what: &str) {
    println!("    {what}");
}

/// A command that is echoed before it runs and whose failure names it.
pub struct Cmd(pub Command);

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Self(Command::new(program))
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.0.args(args);
        self
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.0.arg(arg);
        self
    }

    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.0.env(key, value);
        self
    }

    fn describe(&self) -> String {
        let mut s = self.0.get_program().to_string_lossy().into_owned();
        for a in self.0.get_args() {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    }

    /// Runs with inherited stdio; fails when the exit status is not zero.
    pub fn run(mut self) -> anyhow::Result<()> {
        let d = self.describe();
        println!("    $ {d}");
        let status = self.0.status().with_context(|| format!("could not start `{d}`"))?;
        if !status.success() {
            bail!("`{d}` failed ({status})");
        }
        Ok(())
    }

    /// Runs quietly and returns the output; fails (with stderr) when the status is not zero.
    pub fn output(mut self) -> anyhow::Result<Output> {
        let d = self.describe();
        let out = self.0.output().with_context(|| format!("could not start `{d}`"))?;
        if !out.status.success() {
            bail!("`{d}` failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(out)
    }

    /// True when the command starts and exits with status zero (output discarded).
    pub fn succeeds(mut self) -> bool {
        self.0.output().map(|o| o.status.success()).unwrap_or(false)
    }
}

/// Bytes free to an unprivileged writer on the file system holding `path` (`df`, so
/// xtask needs no libc binding for statvfs).
pub fn free_bytes(path: &std::path::Path) -> anyhow::Result<u64> {
    let out = Cmd::new("df").args(["-B1", "--output=avail"]).arg(path).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("df printed no free space for {}: {text:?}", path.display()))
}
