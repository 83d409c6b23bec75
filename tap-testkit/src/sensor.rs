//! Running `tap-sensor capture` as a child process inside a namespace, waiting until it is
//! attached, signalling it and reading the counters it prints.

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::netns::{SpanPair, MIRROR_IF};

pub struct SensorProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Every stdout line so far.
    pub output: Vec<String>,
}

impl SensorProcess {
    /// Starts `binary capture --iface <mirror> <args…>` in the pair's mirror namespace and
    /// waits for its `ready:` line.
    pub fn start(binary: &Path, pair: &SpanPair, args: &[&str]) -> anyhow::Result<Self> {
        let mut child = SpanPair::command_in(&pair.mirror_ns, binary)
            .args(["capture", "--iface", MIRROR_IF])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {}", binary.display()))?;
        let stdout = child.stdout.take().context("sensor stdout")?;
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut sensor = Self { child, lines, output: Vec::new() };
        sensor.wait_for("ready:", Duration::from_secs(30))?;
        Ok(sensor)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a stdout line starting with `prefix`.
    pub fn wait_for(&mut self, prefix: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let hit = line.starts_with(prefix);
                    self.output.push(line);
                    if hit {
                        return Ok(());
                    }
                }
                Err(_) => {
                    let status = self.child.try_wait().ok().flatten();
                    bail!(
                        "tap-sensor did not print '{prefix}' (exit status {status:?}); output so far: {:?}",
                        self.output
                    );
                }
            }
        }
    }

    /// Sends a signal by name ("TERM", "HUP", "USR1").
    pub fn signal(&self, sig: &str) -> anyhow::Result<()> {
        let ok = Command::new("kill").arg(format!("-{sig}")).arg(self.pid().to_string()).status()?.success();
        if !ok {
            bail!("kill -{sig} {} failed", self.pid());
        }
        Ok(())
    }

    /// CPU time (user + system) the process has used so far, from /proc/PID/stat.
    pub fn cpu_time(&self) -> anyhow::Result<Duration> {
        process_cpu_time(self.pid())
    }

    /// SIGTERM, wait for a clean exit, and return the last value of every counter printed.
    pub fn stop(mut self) -> anyhow::Result<Counters> {
        self.signal("TERM")?;
        let status = self.child.wait()?;
        self.output.extend(self.lines.iter());
        if !status.success() {
            bail!("tap-sensor exited with {status}; output: {:?}", self.output);
        }
        let counters = Counters::parse(&self.output);
        if counters.0.is_empty() {
            bail!("no counter report in {:?}", self.output);
        }
        Ok(counters)
    }
}

/// `name value` pairs from the sensor's report; later lines win (a SIGUSR1 report may come
/// before the final one).
#[derive(Clone, Debug, Default)]
pub struct Counters(pub HashMap<String, u64>);

impl Counters {
    pub fn parse(lines: &[String]) -> Self {
        let mut map = HashMap::new();
        for line in lines {
            let mut parts = line.split_whitespace();
            if let (Some(name), Some(value), None) = (parts.next(), parts.next(), parts.next()) {
                if let Ok(v) = value.parse() {
                    map.insert(name.to_string(), v);
                }
            }
        }
        Self(map)
    }

    /// A counter's value; a missing name is a bug in the caller or the sensor, so it panics
    /// with the name.
    pub fn get(&self, name: &str) -> u64 {
        *self.0.get(name).unwrap_or_else(|| panic!("counter {name} not reported; have {:?}", self.0.keys()))
    }
}

/// CPU time a process has used so far, all threads: the sum of the first field of
/// /proc/PID/task/*/schedstat (nanoseconds on CPU; /proc/PID/stat counts 10 ms ticks,
/// too coarse for a few seconds of a light consumer).
pub fn process_cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let mut total = 0u64;
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).with_context(|| format!("list threads of {pid}"))?;
    for task in tasks.flatten() {
        // A thread may exit between listing and reading; its time is then lost, which
        // only happens at shutdown.
        if let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) {
            total += stat.split_whitespace().next().and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    Ok(Duration::from_nanos(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lines_parse_and_later_values_win() {
        let lines: Vec<String> =
            ["ready: capturing", "xdp_seen   10", "xdp_kept 2", "xdp_seen 12", "some text line here"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        let c = Counters::parse(&lines);
        assert_eq!(c.get("xdp_seen"), 12);
        assert_eq!(c.get("xdp_kept"), 2);
        assert!(!c.0.contains_key("some"));
    }

    #[test]
    fn own_cpu_time_is_readable() {
        let t = process_cpu_time(std::process::id()).unwrap();
        assert!(t < Duration::from_secs(3600));
    }
}
