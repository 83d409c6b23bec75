//! Batches of captured frames, as they travel from the ring readers (or a capture file) to
//! the pcap writer and the pipeline workers.

use std::time::Duration;

use tap_common::record::{RecordHeader, RECORD_HEADER_LEN};

/// Frames per batch: large enough to amortise the channel, small enough to keep latency.
pub const BATCH_FRAMES: usize = 256;
/// Bytes per batch (records and headers). A batch is sent when full rather than grown:
/// growing copied every batch once more (measured: 13% of the sensor's CPU in realloc).
pub const BATCH_BYTES: usize = 128 << 10;

/// Length of the classic pcap record header (RFC draft-ietf-opsawg-pcap, section 5):
/// seconds, nanoseconds (the file says nanosecond resolution), captured length, wire length.
/// The ring records carry the same header (`RecordHeader`).
pub const PCAP_RECORD_HEADER: usize = RECORD_HEADER_LEN;

/// Frames copied out of a ring, stored back to back in one buffer, each behind a pcap
/// record header in native byte order. Writing a batch to a pcap file is then one
/// `write_all` of the buffer: the consumer copies nothing (measured: the second copy and
/// per-record encoding were a third of the sensor's CPU at the generator's top rate).
#[derive(Debug, Default)]
pub struct FrameBatch {
    bytes: Vec<u8>,
    slots: Vec<RawRecord>,
    /// Where the byte buffer goes back to when the batch is dropped (see [`Self::recycled_to`]).
    recycle: Option<crossbeam_channel::Sender<Buffers>>,
}

/// A batch's two buffers, emptied, on their way back to the producer.
pub type Buffers = (Vec<u8>, Vec<RawRecord>);

/// The buffers of dropped batches, back for the producer's next ones. Fresh buffers cost
/// a page fault and the kernel's zeroing of every page they touch: 12% of `bench parse`
/// before buffers were reused.
pub struct BatchPool {
    returned: crossbeam_channel::Sender<Buffers>,
    available: crossbeam_channel::Receiver<Buffers>,
}

impl BatchPool {
    /// A pool that keeps at most `depth` sets of buffers.
    pub fn new(depth: usize) -> Self {
        let (returned, available) = crossbeam_channel::bounded(depth);
        Self { returned, available }
    }

    /// Empty buffers with room for `frames` frames and `bytes` bytes.
    pub fn take(&self, frames: usize, bytes: usize) -> Buffers {
        match self.available.try_recv() {
            Ok((b, s)) if b.capacity() >= bytes && s.capacity() >= frames => (b, s),
            _ => (Vec::with_capacity(bytes), Vec::with_capacity(frames)),
        }
    }

    /// An empty batch with room for `frames` frames and `bytes` bytes whose buffers come
    /// back here when it is dropped.
    pub fn batch(&self, frames: usize, bytes: usize) -> FrameBatch {
        let (bytes, slots) = self.take(frames, bytes);
        FrameBatch { bytes, slots, recycle: Some(self.returned.clone()) }
    }

    /// Makes `batch` give its buffers back here when it is dropped.
    pub fn recycle(&self, mut batch: FrameBatch) -> FrameBatch {
        batch.recycle = Some(self.returned.clone());
        batch
    }
}

impl Drop for FrameBatch {
    fn drop(&mut self) {
        if let Some(pool) = self.recycle.take() {
            let (mut bytes, mut slots) = (std::mem::take(&mut self.bytes), std::mem::take(&mut self.slots));
            bytes.clear();
            slots.clear();
            // A full pool means the producer is ahead; the buffers are then simply freed.
            let _ = pool.try_send((bytes, slots));
        }
    }
}

/// Where one frame lies in a batch's byte buffer.
#[derive(Clone, Copy, Debug)]
pub struct RawRecord {
    /// Wall-clock time, nanoseconds since the Unix epoch.
    pub timestamp_ns: u64,
    pub orig_len: u32,
    /// Offset of the frame bytes, after their 16-byte record header.
    pub start: u32,
    pub len: u32,
}

/// One captured frame, borrowed from its batch.
#[derive(Clone, Copy, Debug)]
pub struct Frame<'a> {
    /// Wall-clock time of capture, nanoseconds since the Unix epoch.
    pub timestamp_ns: u64,
    pub orig_len: u32,
    pub data: &'a [u8],
}

impl FrameBatch {
    pub fn with_capacity(frames: usize, bytes: usize) -> Self {
        Self { bytes: Vec::with_capacity(bytes), slots: Vec::with_capacity(frames), recycle: None }
    }

    /// Takes `bytes`, classic pcap records already in this batch's form (native byte
    /// order, nanoseconds), without copying them: a capture file is read straight into a
    /// batch. Each record is checked to lie inside `bytes`; `None` when one does not.
    pub fn from_records(bytes: Vec<u8>, records: Vec<RawRecord>) -> Option<Self> {
        let inside = |r: &RawRecord| {
            (r.start as usize) >= PCAP_RECORD_HEADER && (r.start as usize + r.len as usize) <= bytes.len()
        };
        records.iter().all(inside).then_some(Self { bytes, slots: records, recycle: None })
    }

    /// Whether a frame of `len` bytes still fits without growing the buffers.
    pub fn has_room(&self, len: usize) -> bool {
        self.slots.len() < self.slots.capacity() && self.bytes.len() + PCAP_RECORD_HEADER + len <= self.bytes.capacity()
    }

    /// Appends a ring record: `record` is its pcap record (`header`'s bytes, then the
    /// frame), copied as it is.
    pub fn push_record(&mut self, header: &RecordHeader, record: &[u8]) {
        let start = (self.bytes.len() + PCAP_RECORD_HEADER) as u32;
        self.bytes.extend_from_slice(record);
        let len = (record.len() - PCAP_RECORD_HEADER) as u32;
        self.slots.push(RawRecord { timestamp_ns: header.timestamp_ns(), orig_len: header.orig_len, start, len });
    }

    /// Appends a frame captured at `ts` (since the Unix epoch) that was `orig_len` bytes
    /// long on the wire.
    pub fn push_frame(&mut self, ts: Duration, orig_len: u32, data: &[u8]) {
        let timestamp_ns = ts.as_nanos() as u64;
        // Native byte order and nanoseconds, as the files this sensor writes say in their
        // header.
        self.bytes.extend_from_slice(&RecordHeader::new(timestamp_ns, data.len() as u32, orig_len).to_bytes());
        let start = self.bytes.len() as u32;
        self.bytes.extend_from_slice(data);
        self.slots.push(RawRecord { timestamp_ns, orig_len, start, len: data.len() as u32 });
    }

    /// The frame at `index`.
    pub fn get(&self, index: usize) -> Option<Frame<'_>> {
        let s = self.slots.get(index)?;
        Some(Frame {
            timestamp_ns: s.timestamp_ns,
            orig_len: s.orig_len,
            data: &self.bytes[s.start as usize..(s.start + s.len) as usize],
        })
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = Frame<'_>> {
        (0..self.slots.len()).filter_map(|i| self.get(i))
    }

    /// The batch as pcap records (nanosecond timestamps, native byte order).
    pub fn pcap_records(&self) -> &[u8] {
        &self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_keeps_frames_apart_in_order_and_as_pcap_records() {
        let mut batch = FrameBatch::with_capacity(2, 64);
        assert!(batch.has_room(3));
        let first = RecordHeader::new(1_795_000_001_000_000_007, 3, 60);
        let second = RecordHeader::new(1_795_000_002_000_000_002, 2, 1514);
        batch.push_record(&first, &[&first.to_bytes()[..], b"abc"].concat());
        batch.push_record(&second, &[&second.to_bytes()[..], b"de"].concat());
        let frames: Vec<_> = batch.iter().map(|f| (f.timestamp_ns, f.orig_len, f.data.to_vec())).collect();
        assert_eq!(
            frames,
            vec![(1_795_000_001_000_000_007, 60, b"abc".to_vec()), (1_795_000_002_000_000_002, 1514, b"de".to_vec())]
        );

        let rec = batch.pcap_records();
        assert_eq!(rec.len(), 2 * PCAP_RECORD_HEADER + 5);
        let word = |at: usize| u32::from_ne_bytes(rec[at..at + 4].try_into().unwrap());
        assert_eq!((word(0), word(4)), (1_795_000_001, 7));
        assert_eq!((word(8), word(12)), (3, 60));
        assert_eq!(&rec[16..19], b"abc");
        assert_eq!((word(27), word(31)), (2, 1514));
        assert_eq!(&rec[35..37], b"de");
        assert!(!batch.has_room(0), "two slots used");
        assert!(!FrameBatch::with_capacity(2, 64).has_room(64 - PCAP_RECORD_HEADER + 1), "bytes full");
    }
}
