//! Layout of one captured frame in the ring buffers.
//!
//! A ring-buffer reservation must have a size known to the verifier, so a record is a
//! fixed header followed by one of a few fixed data sizes ("size classes"); a 60-byte
//! Kerberos frame does not take the room of a 1522-byte one. The header says how many
//! data bytes are valid.

/// Largest frame kept: 1514 bytes of Ethernet plus two 4-byte VLAN tags, rounded up to a
/// multiple of 8 so records stay aligned in the ring.
pub const MAX_SNAPLEN: usize = 1528;
const _: () = assert!(MAX_SNAPLEN >= 1514 + 2 * 4 && MAX_SNAPLEN.is_multiple_of(8));

/// Data sizes of the record classes, smallest first. Classes other than the last exist
/// only to save ring space; the choice never changes what is copied. Padding is not free
/// to the reader either: it streams through every line of the ring (see
/// `MappedRing::prefetch`), so a 600-byte frame in a 1528-byte class cost it twice the
/// lines it needed (measured: five classes instead of three, 3% less reader CPU, no
/// difference in the program's cost).
pub const SIZE_CLASSES: [usize; 5] = [128, 256, 512, 1024, MAX_SNAPLEN];

/// Number of ring buffers: the program writes to ring `cpu % RING_COUNT`, so up to this
/// many CPUs never contend on one ring's producer lock.
pub const RING_COUNT: usize = 4;
/// Ring buffer map names, indexed like the rings.
pub const RING_MAPS: [&str; RING_COUNT] = ["RING_0", "RING_1", "RING_2", "RING_3"];

/// The program forces a wakeup of the reader each time another 1/WAKEUP_FRACTION of the
/// ring is queued; other records are submitted without one and the reader polls
/// (measured here: a wakeup per record costs more than the capture). Half a ring leaves
/// the reader the other half to answer in (8 MiB with the default ring: 64 ms at a full
/// gigabit of kept traffic) and wakes it twice per ring's worth. Each wakeup costs tens of
/// microseconds of CPU in this VM: waking at each quarter instead cost the recorder 13%
/// more at top rate, and the 1 MiB fixed step before that a fifth.
pub const WAKEUP_FRACTION: u64 = 2;

/// Header in front of the frame bytes of every record: the classic pcap record header
/// (nanosecond resolution, native byte order). A record's header and frame are then a pcap
/// record as they lie in the ring, and the recorder writes each as one slice from there
/// (measured: building a header and a second slice per frame was a tenth to a fifth of
/// its CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordHeader {
    /// Capture time, seconds since the Unix epoch: `bpf_ktime_get_ns()` plus the offset
    /// from CLOCK_MONOTONIC to CLOCK_REALTIME the sensor set (`ConfigSlot::ClockOffset*`).
    /// Unsigned 32 bits, as in pcap: good until 2106.
    pub ts_sec: u32,
    /// Nanoseconds within the second.
    pub ts_nsec: u32,
    /// Bytes of the frame that follow this header (`<= orig_len`, `<= snaplen`).
    pub cap_len: u32,
    /// Length of the frame on the wire.
    pub orig_len: u32,
}

pub const NANOS_PER_SECOND: u64 = 1_000_000_000;

pub const RECORD_HEADER_LEN: usize = core::mem::size_of::<RecordHeader>();

/// One ring-buffer record of size class `N`.
#[repr(C)]
pub struct Record<const N: usize> {
    pub header: RecordHeader,
    pub data: [u8; N],
}

impl RecordHeader {
    /// A header for a frame captured `unix_ns` nanoseconds after the Unix epoch.
    pub const fn new(unix_ns: u64, cap_len: u32, orig_len: u32) -> Self {
        let secs = unix_ns / NANOS_PER_SECOND;
        Self { ts_sec: secs as u32, ts_nsec: (unix_ns - secs * NANOS_PER_SECOND) as u32, cap_len, orig_len }
    }

    /// The header as it lies in a record (and in a pcap file of native byte order).
    pub fn to_bytes(&self) -> [u8; RECORD_HEADER_LEN] {
        let mut bytes = [0u8; RECORD_HEADER_LEN];
        for (at, word) in [self.ts_sec, self.ts_nsec, self.cap_len, self.orig_len].into_iter().enumerate() {
            bytes[at * 4..at * 4 + 4].copy_from_slice(&word.to_ne_bytes());
        }
        bytes
    }

    /// Capture time, nanoseconds since the Unix epoch.
    #[inline]
    pub const fn timestamp_ns(&self) -> u64 {
        self.ts_sec as u64 * NANOS_PER_SECOND + self.ts_nsec as u64
    }

    /// Reads a header from the start of a ring-buffer item and returns it with the item's
    /// pcap record: the header's bytes and the frame's. `None` when the item is shorter
    /// than a header or claims more bytes than it holds.
    #[inline]
    pub fn parse(item: &[u8]) -> Option<(RecordHeader, &[u8])> {
        let head = item.get(..RECORD_HEADER_LEN)?;
        let word = |at: usize| u32::from_ne_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
        let header = RecordHeader { ts_sec: word(0), ts_nsec: word(4), cap_len: word(8), orig_len: word(12) };
        let record = item.get(..RECORD_HEADER_LEN + header.cap_len as usize)?;
        Some((header, record))
    }

    /// The frame of a pcap record that `parse` returned.
    #[inline]
    pub fn frame(record: &[u8]) -> &[u8] {
        record.get(RECORD_HEADER_LEN..).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn header_layout_is_the_pcap_record_header() {
        assert_eq!(size_of::<RecordHeader>(), 16);
        assert_eq!(offset_of!(RecordHeader, ts_sec), 0);
        assert_eq!(offset_of!(RecordHeader, ts_nsec), 4);
        assert_eq!(offset_of!(RecordHeader, cap_len), 8);
        assert_eq!(offset_of!(RecordHeader, orig_len), 12);
        assert_eq!(offset_of!(Record<128>, data), RECORD_HEADER_LEN);
        assert_eq!(size_of::<Record<128>>() % 8, 0);
    }

    #[test]
    fn timestamps_split_into_seconds_and_nanoseconds_and_back() {
        for unix_ns in [0, 999_999_999, 1_000_000_000, 1_795_000_000_123_456_789, u32::MAX as u64 * NANOS_PER_SECOND] {
            let h = RecordHeader::new(unix_ns, 1, 2);
            assert!(h.ts_nsec < 1_000_000_000);
            assert_eq!(h.timestamp_ns(), unix_ns);
        }
        let h = RecordHeader::new(1_795_000_000_123_456_789, 60, 1514);
        assert_eq!((h.ts_sec, h.ts_nsec, h.cap_len, h.orig_len), (1_795_000_000, 123_456_789, 60, 1514));
    }

    #[test]
    fn classes_are_ascending_aligned_and_hold_a_double_tagged_frame() {
        assert!(SIZE_CLASSES.windows(2).all(|w| w[0] < w[1]));
        assert!(SIZE_CLASSES.iter().all(|c| c.is_multiple_of(8)));
        assert_eq!(*SIZE_CLASSES.last().unwrap(), MAX_SNAPLEN);
    }

    #[test]
    fn parse_reads_header_and_bounds_the_record() {
        let mut item = [0u8; RECORD_HEADER_LEN + 8];
        item[..16].copy_from_slice(&RecordHeader::new(7_000_000_042, 5, 100).to_bytes());
        assert_eq!(item[8..12], 5u32.to_ne_bytes(), "pcap's order: captured length first");
        item[16..21].copy_from_slice(b"abcde");
        let (h, record) = RecordHeader::parse(&item).unwrap();
        assert_eq!((h.timestamp_ns(), h.orig_len, h.cap_len), (7_000_000_042, 100, 5));
        assert_eq!(record, &item[..21]);
        assert_eq!(RecordHeader::frame(record), b"abcde");
        // A header that claims more bytes than the item holds is rejected, not sliced.
        item[8..12].copy_from_slice(&9u32.to_ne_bytes());
        assert!(RecordHeader::parse(&item).is_none());
        assert!(RecordHeader::parse(&item[..15]).is_none());
    }
}
