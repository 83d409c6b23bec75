//! Helpers shared by the integration tests that read captures through the pipeline.

use std::{path::Path, sync::Arc, time::Duration};

use tap_user::{
    event::{analyzer::Analyzer, ActivityEvent, Collect, Stamper},
    pipeline::{read::read_file, PipelineOptions, Worker},
};

/// Every event the sensor makes of a capture file (one worker, in order).
pub fn events(pcap: &Path) -> Vec<ActivityEvent> {
    let sink = Collect::default();
    let store = Arc::clone(&sink.0);
    let mut w = Worker::new(Analyzer::new(Box::new(sink), Stamper::new("test")), &PipelineOptions::default());
    read_file(pcap, &mut |b| {
        for f in b.iter() {
            w.frame(Duration::from_nanos(f.timestamp_ns), f.data);
        }
        Ok(())
    })
    .unwrap();
    w.finish();
    let v = store.lock().unwrap().clone();
    v
}
