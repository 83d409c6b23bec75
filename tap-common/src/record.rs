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
/// only to save ring space; the choice never changes what is copied.
pub const SIZE_CLASSES: [usize; 3] = [128, 512, MAX_SNAPLEN];

/// Number of ring buffers: the program writes to ring `cpu % RING_COUNT`, so up to this
/// many CPUs never contend on one ring's producer lock.
pub const RING_COUNT: usize = 4;
/// Ring buffer map names, indexed like the rings.
pub const RING_MAPS: [&str; RING_COUNT] = ["RING_0", "RING_1", "RING_2", "RING_3"];

/// The program forces a wakeup of the reader each time another 1/WAKEUP_FRACTION of the
/// ring is queued; other records are submitted without one and the reader polls
/// (TOOLCHAIN.md: a wakeup per record costs more than the capture). A quarter leaves the
/// reader three quarters of the ring to answer in, and wakes it 4 times per ring's worth
/// instead of 16 with the 1 MiB fixed step it replaced (measured: a fifth of the
/// recorder's CPU at top rate was switching to and from the reader).
pub const WAKEUP_FRACTION: u64 = 4;

/// Header in front of the frame bytes of every record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordHeader {
    /// `bpf_ktime_get_ns()` when the program ran (CLOCK_MONOTONIC, nanoseconds).
    pub timestamp_ns: u64,
    /// Length of the frame on the wire.
    pub orig_len: u32,
    /// Bytes of the frame that follow this header (`<= orig_len`, `<= snaplen`).
    pub cap_len: u32,
}

pub const RECORD_HEADER_LEN: usize = core::mem::size_of::<RecordHeader>();

/// One ring-buffer record of size class `N`.
#[repr(C)]
pub struct Record<const N: usize> {
    pub header: RecordHeader,
    pub data: [u8; N],
}

impl RecordHeader {
    /// Reads a header from the start of a ring-buffer item; `None` when the item is shorter
    /// than a header or claims more bytes than it holds.
    #[inline]
    pub fn parse(item: &[u8]) -> Option<(RecordHeader, &[u8])> {
        let head = item.get(..RECORD_HEADER_LEN)?;
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&head[0..8]);
        let mut orig = [0u8; 4];
        orig.copy_from_slice(&head[8..12]);
        let mut cap = [0u8; 4];
        cap.copy_from_slice(&head[12..16]);
        let header = RecordHeader {
            timestamp_ns: u64::from_ne_bytes(ts),
            orig_len: u32::from_ne_bytes(orig),
            cap_len: u32::from_ne_bytes(cap),
        };
        let data = Self::data(item, &header)?;
        Some((header, data))
    }

    /// The frame bytes of `item`, whose header `parse` read as `header`.
    #[inline]
    pub fn data<'a>(item: &'a [u8], header: &RecordHeader) -> Option<&'a [u8]> {
        item.get(RECORD_HEADER_LEN..RECORD_HEADER_LEN + header.cap_len as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, offset_of, size_of};

    #[test]
    fn header_layout_is_fixed() {
        assert_eq!(size_of::<RecordHeader>(), 16);
        assert_eq!(offset_of!(RecordHeader, timestamp_ns), 0);
        assert_eq!(offset_of!(RecordHeader, orig_len), 8);
        assert_eq!(offset_of!(RecordHeader, cap_len), 12);
        assert_eq!(offset_of!(Record<128>, data), RECORD_HEADER_LEN);
        assert_eq!(align_of::<Record<128>>(), 8);
    }

    #[test]
    fn classes_are_ascending_aligned_and_hold_a_double_tagged_frame() {
        assert!(SIZE_CLASSES.windows(2).all(|w| w[0] < w[1]));
        assert!(SIZE_CLASSES.iter().all(|c| c.is_multiple_of(8)));
        assert_eq!(*SIZE_CLASSES.last().unwrap(), MAX_SNAPLEN);
    }

    #[test]
    fn parse_reads_header_and_bounds_data() {
        let mut item = [0u8; RECORD_HEADER_LEN + 8];
        item[0..8].copy_from_slice(&42u64.to_ne_bytes());
        item[8..12].copy_from_slice(&100u32.to_ne_bytes());
        item[12..16].copy_from_slice(&5u32.to_ne_bytes());
        item[16..21].copy_from_slice(b"abcde");
        let (h, data) = RecordHeader::parse(&item).unwrap();
        assert_eq!((h.timestamp_ns, h.orig_len, h.cap_len), (42, 100, 5));
        assert_eq!(data, b"abcde");
        // A header that claims more bytes than the item holds is rejected, not sliced.
        item[12..16].copy_from_slice(&9u32.to_ne_bytes());
        assert!(RecordHeader::parse(&item).is_none());
        assert!(RecordHeader::parse(&item[..15]).is_none());
    }
}
