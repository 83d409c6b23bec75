//! The offline run (`tap-sensor --read FILE`, as `zeek -r`): a capture file, or a pipe,
//! through the same pipeline as live capture, paced if asked, the events to JSON lines or
//! through the spool to the cloud, then the counters.

use std::{
    io::Write,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;

use super::{read::read_file, Pipeline, PipelineOptions};
use crate::{
    capture::run::print_summary,
    event::{analyzer::Analyzer, Discard, EventSink, JsonLines, Stamper},
    signals::Signals,
    uplink::{Uplink, UplinkOptions},
};

/// What an offline run produces and where it goes.
pub struct ReadOutput {
    /// Events as JSON lines on stdout (the report then goes to stderr).
    pub json: bool,
    /// Decode, flows and reassembly only (no protocol parser).
    pub no_parsers: bool,
    /// Events to the cloud through the spool.
    pub uplink: Option<UplinkOptions>,
    /// How long to wait, after the file, for the cloud to acknowledge every event.
    pub drain: Duration,
    /// Mbit/s to feed the file at.
    pub pace: Option<f64>,
}

/// `tap-sensor --read FILE`: the file through the same pipeline as live capture, the events
/// to JSON lines or the cloud, then the report; an error when the file is damaged or the
/// cloud did not acknowledge every event within the drain time.
pub fn run(path: &std::path::Path, opts: PipelineOptions, output: ReadOutput, sensor_id: &str) -> anyhow::Result<()> {
    let ReadOutput { json, no_parsers, uplink, drain, pace } = output;
    let signals = Signals::install()?;
    let stamper = Stamper::new(sensor_id);
    let json_out = json.then(|| Arc::new(Mutex::new(std::io::BufWriter::new(std::io::stdout()))));
    // `-` is standard input, as for tcpdump -r and zeek -r.
    let path = if path == std::path::Path::new("-") { std::path::Path::new("/dev/stdin") } else { path };
    // A pipe has no identity to remember: reading it again cannot be recognised, so the
    // guard against sending a re-read file's events twice does not apply.
    let guarded = std::fs::metadata(path).is_ok_and(|m| m.is_file());
    let mut uplink = match uplink {
        Some(u) if guarded => Some(Uplink::start(u, Some(path))?),
        Some(u) => {
            log::warn!(
                "{} is not a regular file (a pipe?): every event is sent, without the check that skips events an earlier read of the same file already sent",
                path.display()
            );
            Some(Uplink::start(u, None)?)
        }
        None => None,
    };
    if let Some(u) = &uplink {
        signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&u.reload))?;
    }
    let endpoints = Arc::new(crate::event::analyzer::Endpoints::default());
    let pipeline = Pipeline::start(&opts, |_| {
        let sink: Box<dyn EventSink> = match (&json_out, &uplink) {
            (Some(out), _) => Box::new(JsonLines::new(Arc::clone(out))),
            (None, Some(u)) => Box::new(u.sink(true)),
            (None, None) => Box::new(Discard),
        };
        let analyzer = Analyzer::new(sink, stamper.clone()).with_endpoints(Arc::clone(&endpoints));
        if no_parsers {
            analyzer.streams_only()
        } else {
            analyzer
        }
    })?;
    let started = std::time::Instant::now();
    let mut fed_bits = 0f64;
    let result = read_file(path, &mut |batch| {
        if let Some(mbps) = pace {
            fed_bits += batch.iter().map(|f| f.data.len() as f64 * 8.0).sum::<f64>();
            let due = Duration::from_secs_f64(fed_bits / (mbps * 1e6));
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        pipeline.dispatch(batch);
        if Signals::take(&signals.dump_counters) {
            let _ = pipeline.counters().write(&mut std::io::stderr().lock());
        }
        if signals.stopping() {
            anyhow::bail!("interrupted");
        }
        Ok(())
    });
    let (counters, summaries) = pipeline.finish()?;
    let elapsed = started.elapsed();
    let mut unsent = 0;
    if let Some(u) = uplink.as_mut() {
        u.finish_writing()?;
        unsent = u.drain(drain, &signals.stop);
    }
    let stats = result.as_ref().map(|s| *s).unwrap_or_default();
    if let Some(out) = &json_out {
        out.lock().map_err(|_| anyhow::anyhow!("JSON output poisoned"))?.flush()?;
    }
    // With --json, stdout carries the events; the report goes to stderr.
    let mut report: Box<dyn Write> = if json { Box::new(std::io::stderr()) } else { Box::new(std::io::stdout()) };
    {
        let out = &mut report;
        let rows = [
            ("frames", counters.decode.frames),
            ("bytes", counters.decode.bytes),
            ("skipped_link_type", stats.skipped_link_type),
            ("skipped_bad_time", stats.skipped_bad_time),
            ("elapsed_us", elapsed.as_micros() as u64),
        ];
        crate::telemetry::write_rows(out, "read", &rows)?;
        counters.write(out)?;
        if let Some(u) = &uplink {
            crate::telemetry::write_rows(out, "", &u.report_rows())?;
        }
    }
    print_summary(&summaries, &mut report);
    if let Some(u) = uplink {
        let (dir, error) = (u.spool.dir().to_path_buf(), u.status.last_error());
        u.stop();
        if unsent > 0 {
            anyhow::bail!(
                "{unsent} events not acknowledged by the cloud within {:.0} s ({}); they stay in the spool {} and go out on the next run",
                drain.as_secs_f64(),
                error.unwrap_or_else(|| "no error seen".into()),
                dir.display()
            );
        }
    }
    result.map(|_| ()).with_context(|| format!("read {}", path.display()))
}
