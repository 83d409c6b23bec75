//! A reader of our own over a BPF ring buffer's memory mapping: the layout libbpf's
//! `ring_buffer__consume` reads (a writable page with the consumer position, then a
//! read-only page with the producer position, then the data pages mapped twice in a row so
//! that a record that wraps around the end reads as one slice).
//!
//! Why not aya's `RingBuf`: it hands records out one at a time and releases each as it is
//! dropped, a release store of the consumer position per record. A frame then had to be
//! copied out of the ring before the next was looked at. Here the reader walks a run of
//! records, uses them where they lie (the recorder writes them to the pcap file straight
//! from this mapping) and gives the whole run back with one store ([`MappedRing::release`]).

use std::{
    os::fd::{AsFd, AsRawFd, RawFd},
    ptr::NonNull,
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
};

use anyhow::{bail, Context as _};
use aya::maps::MapData;

/// The kernel's record header: length (with the two flags below) and page offset.
const RECORD_HEADER: u64 = 8;
/// How far ahead of the cursor the reader asks for cache lines.
const PREFETCH_AHEAD: u64 = 2048;
const CACHE_LINE: u64 = 64;
/// Set while the producer has the record reserved: nothing past it is readable yet.
const BUSY_BIT: u32 = 1 << 31;
/// Set on a discarded record: skipped, but its space is still the consumer's to release.
const DISCARD_BIT: u32 = 1 << 30;

pub struct MappedRing {
    /// Keeps the map (and so the mapping's backing) alive; also what poll(2) waits on.
    map: MapData,
    consumer_page: NonNull<libc::c_void>,
    producer_area: NonNull<libc::c_void>,
    page: usize,
    size: u64,
    /// Next record to read; ahead of the published consumer position until `release`.
    cursor: u64,
    /// Producer position as last read: records before it are reserved or committed.
    end: u64,
    /// Position up to which the cache lines have been asked for (see `prefetch`).
    prefetched: u64,
}

// SAFETY: the mapping belongs to this value alone (nothing else reads this ring), and the
// kernel side synchronises through the positions' atomics.
unsafe impl Send for MappedRing {}

impl MappedRing {
    /// Maps the ring buffer `map`, whose data area is `size` bytes (its max_entries).
    pub fn new(map: MapData, size: u32) -> anyhow::Result<Self> {
        let page = super::loader::page_size() as usize;
        let size = size as usize;
        if !size.is_power_of_two() || size < page {
            bail!("ring buffer size {size} is not a power of two of at least one page");
        }
        let fd = map.fd().as_fd().as_raw_fd();
        // SAFETY: mapping a ring buffer map's fd as the kernel documents (kernel/bpf/
        // ringbuf.c, ringbuf_map_mmap_kern): one writable page at offset 0, the rest
        // read-only from offset one page. Failures are checked.
        let consumer_page = unsafe {
            libc::mmap(std::ptr::null_mut(), page, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0)
        };
        if consumer_page == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("map the ring buffer's consumer page");
        }
        // SAFETY: as above; the producer page and the data twice.
        let producer_area = unsafe {
            libc::mmap(std::ptr::null_mut(), page + 2 * size, libc::PROT_READ, libc::MAP_SHARED, fd, page as i64)
        };
        if producer_area == libc::MAP_FAILED {
            let e = std::io::Error::last_os_error();
            // SAFETY: unmapping the page mapped just above.
            unsafe { libc::munmap(consumer_page, page) };
            return Err(e).context("map the ring buffer's data pages");
        }
        let consumer_page = NonNull::new(consumer_page).context("mmap returned null")?;
        let producer_area = NonNull::new(producer_area).context("mmap returned null")?;
        let mut ring =
            Self { map, consumer_page, producer_area, page, size: size as u64, cursor: 0, end: 0, prefetched: 0 };
        // Resume where a previous reader of this map stopped.
        ring.cursor = ring.consumer_pos().load(Ordering::Acquire);
        ring.end = ring.cursor;
        Ok(ring)
    }

    fn consumer_pos(&self) -> &AtomicU64 {
        // SAFETY: the consumer page is mapped, page-aligned and starts with the position.
        unsafe { self.consumer_page.cast::<AtomicU64>().as_ref() }
    }

    fn producer_pos(&self) -> &AtomicU64 {
        // SAFETY: the producer page is mapped, page-aligned and starts with the position.
        unsafe { self.producer_area.cast::<AtomicU64>().as_ref() }
    }

    fn data(&self) -> *const u8 {
        // SAFETY: the data pages follow the producer page inside the mapping.
        unsafe { self.producer_area.as_ptr().cast::<u8>().add(self.page) }
    }

    /// The record at the cursor, or `None` when the ring holds no committed record there.
    /// Discarded records are stepped over.
    pub fn peek(&mut self) -> Option<&[u8]> {
        loop {
            if self.cursor == self.end {
                self.end = self.producer_pos().load(Ordering::Acquire);
                if self.cursor == self.end {
                    return None;
                }
            }
            self.prefetch();
            let header = self.header_at(self.cursor);
            if header & BUSY_BIT != 0 {
                return None;
            }
            let len = header & !(BUSY_BIT | DISCARD_BIT);
            if u64::from(len) + RECORD_HEADER > self.size || self.end - self.cursor > self.size {
                // Never written by a kernel; stop here rather than read outside the ring.
                return None;
            }
            if header & DISCARD_BIT != 0 {
                self.cursor += record_span(len);
                continue;
            }
            let offset = ((self.cursor & (self.size - 1)) + RECORD_HEADER) as usize;
            // SAFETY: the data is mapped twice in a row, so `offset + len` (under twice the
            // size) is inside the mapping; the record is committed and the kernel does not
            // write it again until the consumer position passes it, which only `release`
            // does, and `release` takes `&mut self`, which this borrow excludes.
            return Some(unsafe { std::slice::from_raw_parts(self.data().add(offset), len as usize) });
        }
    }

    /// Steps the cursor past the record `peek` returned. The record stays in the ring, and
    /// readable, until `release`.
    pub fn advance(&mut self) {
        if self.cursor == self.end {
            return;
        }
        let len = self.header_at(self.cursor) & !(BUSY_BIT | DISCARD_BIT);
        self.cursor += record_span(len);
    }

    /// Gives every record before the cursor back to the producer.
    pub fn release(&mut self) {
        self.consumer_pos().store(self.cursor, Ordering::Release);
    }

    /// Asks for the cache lines of the next PREFETCH_AHEAD queued bytes. The program wrote
    /// them on another CPU, so each first touch misses, and a record's place is only known
    /// from the length of the one before: read one by one, the misses queue up behind each
    /// other (measured: 84% of the reader's time on the load of each record's header).
    /// Asked for ahead, by address, they arrive side by side.
    fn prefetch(&mut self) {
        let target = self.end.min(self.cursor + PREFETCH_AHEAD);
        self.prefetched = self.prefetched.max(self.cursor & !(CACHE_LINE - 1));
        while self.prefetched < target {
            let line = (self.prefetched & (self.size - 1)) as usize;
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a prefetch is a hint; the address is inside the mapped data anyway.
            unsafe {
                use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
                _mm_prefetch::<_MM_HINT_T0>(self.data().add(line).cast());
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = line;
            self.prefetched += CACHE_LINE;
        }
    }

    fn header_at(&self, pos: u64) -> u32 {
        // SAFETY: record headers are 8-aligned inside the mapped data; the kernel writes
        // the length with a release store (bpf_ringbuf_commit), read here with acquire.
        unsafe { (*self.data().add((pos & (self.size - 1)) as usize).cast::<AtomicU32>()).load(Ordering::Acquire) }
    }
}

impl AsRawFd for MappedRing {
    fn as_raw_fd(&self) -> RawFd {
        self.map.fd().as_fd().as_raw_fd()
    }
}

impl Drop for MappedRing {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped; no borrow of it outlives `self`.
        unsafe {
            libc::munmap(self.consumer_page.as_ptr(), self.page);
            libc::munmap(self.producer_area.as_ptr(), self.page + 2 * self.size as usize);
        }
    }
}

/// Ring bytes a record of `len` bytes takes: its header, rounded up to 8.
fn record_span(len: u32) -> u64 {
    (u64::from(len) + RECORD_HEADER + 7) & !7
}

#[cfg(test)]
mod tests {
    use super::record_span;

    #[test]
    fn records_take_their_header_and_round_up_to_eight() {
        assert_eq!(record_span(0), 8);
        assert_eq!(record_span(1), 16);
        assert_eq!(record_span(8), 16);
        assert_eq!(record_span(1544), 1552);
    }
}
