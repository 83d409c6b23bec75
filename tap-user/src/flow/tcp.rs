//! One direction of a TCP conversation turned back into the byte stream the sender wrote.
//!
//! Rules:
//! - bytes are delivered in order, once; a segment ahead of the next expected byte waits in
//!   a bounded out-of-order buffer;
//! - the first copy of a byte wins: later copies (retransmissions, SPAN duplicates,
//!   overlaps) only fill holes, and an overlap whose bytes differ from the buffered ones is
//!   counted as a conflict;
//! - when the buffer would overflow, or the stream ends with holes, the missing range is
//!   delivered as an explicit gap so the parser can resynchronise at the next PDU;
//! - a stream first seen without its SYN starts at the first segment seen (mid-stream
//!   pickup).
//!
//! Offsets are 64-bit positions in the stream, derived from 32-bit sequence numbers by
//! their signed distance to the next expected one, so sequence wrap-around needs no case.

use std::collections::BTreeMap;

use crate::decode::TcpSegment;

#[derive(Clone, Copy, Debug)]
pub struct TcpLimits {
    /// Out-of-order bytes held per direction before the oldest hole is given up as a gap.
    pub max_ooo_bytes: usize,
    /// Out-of-order segments held per direction (bounds per-segment overhead).
    pub max_ooo_segments: usize,
    /// A segment starting further than this beyond the next expected byte is dropped as
    /// out of window: no receive window is that large on a DC, and holding it would turn
    /// everything before it into a gap.
    pub max_ahead: u64,
}

impl Default for TcpLimits {
    fn default() -> Self {
        Self { max_ooo_bytes: 256 << 10, max_ooo_segments: 512, max_ahead: 16 << 20 }
    }
}

crate::counter_set! {
    pub struct TcpCounters {
        /// TCP segments processed.
        segments,
        /// Payload bytes delivered in order.
        bytes_delivered,
        /// Directions whose start was not seen (no SYN): picked up mid-stream.
        midstream_starts,
        /// Segments that arrived ahead of the next expected byte.
        reordered_segments,
        /// Segments wholly before the next expected byte (retransmissions, keep-alives).
        retransmitted_segments,
        /// Segments identical to the one just delivered (the second copy of a SPAN pair).
        duplicate_segments,
        /// Segments that started before the next expected byte and were trimmed.
        overlaps_trimmed,
        /// Overlapping bytes that differed from the bytes already held (first copy kept).
        overlap_conflicts,
        /// Gaps delivered (holes given up on).
        gaps,
        /// Bytes missing in those gaps.
        gap_bytes,
        /// Gaps given up because the receiver acknowledged bytes past them.
        gaps_acked,
        /// Gaps forced by a full out-of-order buffer.
        ooo_overflows,
        /// Segments dropped as too far ahead.
        out_of_window,
    }
}

/// What a direction delivers.
#[derive(Debug, PartialEq, Eq)]
pub enum Chunk<'a> {
    Data(&'a [u8]),
    /// This many bytes are missing here.
    Gap(u64),
}

#[derive(Debug, Default)]
pub struct HalfStream {
    /// Next expected sequence number; `None` until the first segment.
    next_seq: Option<u32>,
    /// Stream offset of `next_seq` (bytes delivered plus bytes given up as gaps).
    delivered: u64,
    ooo: BTreeMap<u64, Vec<u8>>,
    ooo_bytes: usize,
    /// Stream offset of the FIN, once seen.
    fin_at: Option<u64>,
    /// Offset, length and first bytes of the last two delivered pieces, to recognise their
    /// SPAN copies without keeping delivered data (two: a segment that fills a hole is
    /// delivered together with the held one after it, and its copy follows both).
    last: [Option<(u64, usize, [u8; 8])>; 2],
}

fn head(data: &[u8]) -> [u8; 8] {
    let mut h = [0u8; 8];
    let n = data.len().min(8);
    h[..n].copy_from_slice(&data[..n]);
    h
}

impl HalfStream {
    /// Whether the FIN was seen and every byte before it delivered.
    pub fn finished(&self) -> bool {
        self.fin_at.is_some_and(|f| f <= self.delivered)
    }

    /// Bytes held out of order.
    pub fn ooo_bytes(&self) -> usize {
        self.ooo_bytes
    }

    /// Stream offset of the next expected byte.
    pub fn offset(&self) -> u64 {
        self.delivered
    }

    /// Takes one segment; `force_gap` says the global out-of-order budget is spent, so this
    /// direction must not hold more.
    pub fn segment(
        &mut self,
        seg: &TcpSegment<'_>,
        limits: &TcpLimits,
        force_gap: bool,
        c: &mut TcpCounters,
        emit: &mut dyn FnMut(Chunk<'_>),
    ) {
        c.segments += 1;
        let syn = seg.flags.syn();
        let data_seq = if syn { seg.seq.wrapping_add(1) } else { seg.seq };
        let next = match self.next_seq {
            Some(n) => n,
            None => {
                if !syn {
                    c.midstream_starts += 1;
                }
                self.next_seq = Some(data_seq);
                data_seq
            }
        };
        let distance = data_seq.wrapping_sub(next) as i32 as i64;
        let offset = self.delivered as i64 + distance;
        if offset < 0 {
            // Before the first byte this sensor saw: nothing to deliver.
            c.retransmitted_segments += 1;
            return;
        }
        let offset = offset as u64;
        if offset > self.delivered + limits.max_ahead {
            c.out_of_window += 1;
            return;
        }
        if seg.flags.fin() && self.fin_at.is_none() {
            self.fin_at = Some(offset + seg.payload.len() as u64);
        }
        if !seg.payload.is_empty() {
            self.accept(offset, seg.payload, limits, force_gap, c, emit);
        }
    }

    fn accept(
        &mut self,
        offset: u64,
        data: &[u8],
        limits: &TcpLimits,
        force_gap: bool,
        c: &mut TcpCounters,
        emit: &mut dyn FnMut(Chunk<'_>),
    ) {
        let end = offset + data.len() as u64;
        if end <= self.delivered {
            if self.last.contains(&Some((offset, data.len(), head(data)))) {
                c.duplicate_segments += 1;
            } else {
                c.retransmitted_segments += 1;
            }
            return;
        }
        let (offset, data) = if offset < self.delivered {
            c.overlaps_trimmed += 1;
            let cut = (self.delivered - offset) as usize;
            (self.delivered, &data[cut..])
        } else {
            (offset, data)
        };
        if offset == self.delivered {
            if self.ooo.range(..end).next().is_none() {
                self.deliver(offset, data, c, emit);
                self.drain(c, emit);
            } else {
                // It runs into held bytes, which arrived first and win: merge, then drain.
                self.hold(offset, data, c);
                self.drain(c, emit);
            }
            return;
        }
        c.reordered_segments += 1;
        self.hold(offset, data, c);
        if force_gap || self.ooo_bytes > limits.max_ooo_bytes || self.ooo.len() > limits.max_ooo_segments {
            c.ooo_overflows += 1;
            self.skip_to_held(c, emit);
            // Held data can be several islands: give holes up until the direction is within
            // its limits again, so the bound holds whatever the arrival pattern.
            while self.ooo_bytes > limits.max_ooo_bytes || self.ooo.len() > limits.max_ooo_segments {
                self.skip_to_held(c, emit);
            }
        }
    }

    fn deliver(&mut self, offset: u64, data: &[u8], c: &mut TcpCounters, emit: &mut dyn FnMut(Chunk<'_>)) {
        emit(Chunk::Data(data));
        c.bytes_delivered += data.len() as u64;
        self.delivered = offset + data.len() as u64;
        self.last = [Some((offset, data.len(), head(data))), self.last[0]];
        if let Some(n) = self.next_seq.as_mut() {
            *n = n.wrapping_add(data.len() as u32);
        }
    }

    /// Keeps the parts of `data` not already held; compares the parts that are.
    fn hold(&mut self, offset: u64, data: &[u8], c: &mut TcpCounters) {
        let end = offset + data.len() as u64;
        let mut pieces: Vec<(u64, u64)> = Vec::new();
        let mut cursor = offset;
        // Held segments that can overlap [offset, end): those starting before `end`, from
        // the last one starting at or before `offset`.
        let first = self.ooo.range(..=offset).next_back().map(|(k, _)| *k).unwrap_or(offset);
        let mut conflict = false;
        for (&s, held) in self.ooo.range(first..end) {
            let e = s + held.len() as u64;
            if e <= cursor {
                continue;
            }
            if s > cursor {
                pieces.push((cursor, s));
            }
            let (os, oe) = (s.max(cursor), e.min(end));
            if held[(os - s) as usize..(oe - s) as usize] != data[(os - offset) as usize..(oe - offset) as usize] {
                conflict = true;
            }
            cursor = cursor.max(e.min(end));
        }
        if cursor < end {
            pieces.push((cursor, end));
        }
        if conflict {
            c.overlap_conflicts += 1;
        } else if pieces.is_empty() {
            c.duplicate_segments += 1;
        }
        for (s, e) in pieces {
            let bytes = data[(s - offset) as usize..(e - offset) as usize].to_vec();
            self.ooo_bytes += bytes.len();
            self.ooo.insert(s, bytes);
        }
    }

    /// Delivers held segments that continue the stream.
    fn drain(&mut self, c: &mut TcpCounters, emit: &mut dyn FnMut(Chunk<'_>)) {
        while let Some(entry) = self.ooo.first_entry() {
            let start = *entry.key();
            if start > self.delivered {
                break;
            }
            let bytes = entry.remove();
            self.ooo_bytes -= bytes.len();
            let end = start + bytes.len() as u64;
            if end <= self.delivered {
                continue;
            }
            let cut = (self.delivered - start) as usize;
            self.deliver(self.delivered, &bytes[cut..], c, emit);
        }
    }

    /// Gives up the hole before the first held segment: a gap, then what follows it.
    fn skip_to_held(&mut self, c: &mut TcpCounters, emit: &mut dyn FnMut(Chunk<'_>)) {
        if let Some((&start, _)) = self.ooo.first_key_value() {
            if start > self.delivered {
                let missing = start - self.delivered;
                emit(Chunk::Gap(missing));
                c.gaps += 1;
                c.gap_bytes += missing;
                if let Some(n) = self.next_seq.as_mut() {
                    *n = n.wrapping_add(missing as u32);
                }
                self.delivered = start;
            }
            self.drain(c, emit);
        }
    }

    /// The other direction acknowledged up to `ack`: bytes of this direction the receiver
    /// has, so a hole before them will never be filled (the mirror lost that segment, the
    /// receiver did not). Holes up to there are given up at once, rather than held until
    /// the out-of-order limits or the end of the connection, which left the parser blind.
    pub fn acked(&mut self, ack: u32, c: &mut TcpCounters, emit: &mut dyn FnMut(Chunk<'_>)) {
        let Some(next) = self.next_seq else { return };
        let ahead = ack.wrapping_sub(next) as i32;
        if ahead <= 0 {
            return;
        }
        let acked_to = self.delivered + ahead as u64;
        while self.ooo.first_key_value().is_some_and(|(&start, _)| start > self.delivered && start <= acked_to) {
            c.gaps_acked += 1;
            self.skip_to_held(c, emit);
        }
    }

    /// The conversation is over (FIN, RST, timeout or eviction): deliver everything held,
    /// with gaps for the holes.
    pub fn flush(&mut self, c: &mut TcpCounters, emit: &mut dyn FnMut(Chunk<'_>)) {
        while !self.ooo.is_empty() {
            self.skip_to_held(c, emit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::TcpFlags;

    /// Feeds (seq, flags, payload) segments; returns the delivered stream with gaps as
    /// `#`×len (test payloads never contain '#').
    fn run(segs: &[(u32, u8, &[u8])], limits: TcpLimits) -> (Vec<u8>, TcpCounters) {
        let mut h = HalfStream::default();
        let mut c = TcpCounters::default();
        let mut out = Vec::new();
        for &(seq, flags, payload) in segs {
            let seg = TcpSegment { src_port: 1, dst_port: 2, seq, ack: 0, flags: TcpFlags(flags), payload };
            h.segment(&seg, &limits, false, &mut c, &mut |ch| match ch {
                Chunk::Data(d) => out.extend_from_slice(d),
                Chunk::Gap(n) => out.extend(std::iter::repeat_n(b'#', n as usize)),
            });
        }
        h.flush(&mut c, &mut |ch| match ch {
            Chunk::Data(d) => out.extend_from_slice(d),
            Chunk::Gap(n) => out.extend(std::iter::repeat_n(b'#', n as usize)),
        });
        (out, c)
    }

    const SYN: u8 = TcpFlags::SYN;
    const ACK: u8 = TcpFlags::ACK;
    const FIN: u8 = TcpFlags::FIN | TcpFlags::ACK;

    #[test]
    fn in_order_after_syn() {
        let (out, c) = run(&[(100, SYN, b""), (101, ACK, b"hello "), (107, ACK, b"world")], TcpLimits::default());
        assert_eq!(out, b"hello world");
        assert_eq!((c.midstream_starts, c.reordered_segments), (0, 0));
    }

    #[test]
    fn reordered_segments_are_put_back_in_order() {
        let (out, c) = run(&[(100, SYN, b""), (107, ACK, b"world"), (101, ACK, b"hello ")], TcpLimits::default());
        assert_eq!(out, b"hello world");
        assert_eq!(c.reordered_segments, 1);
    }

    #[test]
    fn retransmissions_and_span_duplicates_are_delivered_once() {
        let (out, c) = run(
            &[(0, SYN, b""), (1, ACK, b"abc"), (1, ACK, b"abc"), (4, ACK, b"def"), (7, ACK, b"ghi"), (1, ACK, b"abc")],
            TcpLimits::default(),
        );
        assert_eq!(out, b"abcdefghi");
        assert_eq!(c.duplicate_segments, 1, "the copy right after the original");
        assert_eq!(c.retransmitted_segments, 1, "the later retransmission");
    }

    #[test]
    fn overlap_with_different_bytes_keeps_the_first_and_is_counted() {
        // "XYZ" arrives ahead, then a segment covering it with other bytes.
        let (out, c) = run(&[(0, SYN, b""), (4, ACK, b"XYZ"), (1, ACK, b"abcdefg")], TcpLimits::default());
        assert_eq!(out, b"abcXYZg", "held bytes are the first copy");
        assert_eq!(c.overlap_conflicts, 1);
        let (out, c) =
            run(&[(0, SYN, b""), (4, ACK, b"XYZ"), (3, ACK, b"cdef"), (1, ACK, b"ab")], TcpLimits::default());
        assert_eq!(out, b"abcXYZ");
        assert_eq!(c.overlap_conflicts, 1);
    }

    #[test]
    fn trimmed_overlap_delivers_only_new_bytes() {
        let (out, c) = run(&[(0, SYN, b""), (1, ACK, b"abcd"), (3, ACK, b"cdef")], TcpLimits::default());
        assert_eq!(out, b"abcdef");
        assert_eq!(c.overlaps_trimmed, 1);
    }

    #[test]
    fn a_hole_becomes_a_gap_at_the_end() {
        let (out, c) = run(&[(0, SYN, b""), (1, ACK, b"ab"), (6, ACK, b"fg")], TcpLimits::default());
        assert_eq!(out, b"ab###fg");
        assert_eq!((c.gaps, c.gap_bytes), (1, 3));
    }

    #[test]
    fn a_full_buffer_gives_up_the_hole_and_resynchronises() {
        let limits = TcpLimits { max_ooo_bytes: 4, ..TcpLimits::default() };
        let (out, c) =
            run(&[(0, SYN, b""), (1, ACK, b"ab"), (6, ACK, b"fg"), (8, ACK, b"hij"), (11, ACK, b"k")], limits);
        assert_eq!(out, b"ab###fghijk");
        assert_eq!(c.ooo_overflows, 1);
        // The late bytes of the hole are old news once the gap is delivered.
        let (out, _) = run(&[(0, SYN, b""), (6, ACK, b"fg"), (8, ACK, b"hij"), (1, ACK, b"abcde")], limits);
        assert_eq!(out, b"#####fghij");
    }

    #[test]
    fn many_islands_never_exceed_the_limits() {
        let limits = TcpLimits { max_ooo_bytes: 8, max_ooo_segments: 3, ..TcpLimits::default() };
        let mut h = HalfStream::default();
        let mut c = TcpCounters::default();
        let seg = |seq, payload| TcpSegment { src_port: 1, dst_port: 2, seq, ack: 0, flags: TcpFlags(ACK), payload };
        h.segment(&TcpSegment { flags: TcpFlags(SYN), ..seg(0, b"") }, &limits, false, &mut c, &mut |_| {});
        // Islands of two bytes with one-byte holes between them, arriving backwards.
        for i in (1..40u32).rev() {
            h.segment(&seg(1 + 3 * i, b"xy"), &limits, false, &mut c, &mut |_| {});
            assert!(h.ooo_bytes() <= 8 && h.ooo.len() <= 3, "held {} bytes in {} segments", h.ooo_bytes(), h.ooo.len());
        }
    }

    #[test]
    fn mid_stream_pickup_starts_at_the_first_segment_seen() {
        let (out, c) = run(&[(5000, ACK, b"middle"), (5006, ACK, b" end")], TcpLimits::default());
        assert_eq!(out, b"middle end");
        assert_eq!(c.midstream_starts, 1);
        // Data from before the pickup point is not invented.
        let (out, c) = run(&[(5000, ACK, b"xy"), (4990, ACK, b"0123456789")], TcpLimits::default());
        assert_eq!(out, b"xy");
        assert_eq!(c.retransmitted_segments, 1);
    }

    #[test]
    fn sequence_numbers_wrap() {
        let isn = u32::MAX - 2;
        let (out, _) = run(
            &[
                (isn, SYN, b""),
                (isn.wrapping_add(1), ACK, b"ab"),
                (isn.wrapping_add(5), ACK, b"ef"),
                (isn.wrapping_add(3), ACK, b"cd"),
            ],
            TcpLimits::default(),
        );
        assert_eq!(out, b"abcdef");
    }

    #[test]
    fn zero_window_probe_then_retransmission() {
        // A 1-byte probe of the next byte, refused by the receiver and sent again with more.
        let (out, c) = run(&[(0, SYN, b""), (1, ACK, b"ab"), (3, ACK, b"c"), (3, ACK, b"cdef")], TcpLimits::default());
        assert_eq!(out, b"abcdef");
        assert_eq!(c.overlaps_trimmed, 1);
        // A keep-alive: one old byte below the next expected one.
        let (out, c) = run(&[(0, SYN, b""), (1, ACK, b"ab"), (2, ACK, b"b"), (3, ACK, b"c")], TcpLimits::default());
        assert_eq!(out, b"abc");
        assert_eq!(c.retransmitted_segments, 1);
    }

    #[test]
    fn fin_marks_the_end_once_everything_before_it_arrived() {
        let mut h = HalfStream::default();
        let mut c = TcpCounters::default();
        let seg =
            |seq, flags, payload| TcpSegment { src_port: 1, dst_port: 2, seq, ack: 0, flags: TcpFlags(flags), payload };
        let l = TcpLimits::default();
        h.segment(&seg(0, SYN, b""), &l, false, &mut c, &mut |_| {});
        h.segment(&seg(4, FIN, b"d"), &l, false, &mut c, &mut |_| {});
        assert!(!h.finished(), "bytes 1..4 are still missing");
        h.segment(&seg(1, ACK, b"abc"), &l, false, &mut c, &mut |_| {});
        assert!(h.finished());
    }

    #[test]
    fn far_future_segments_are_refused() {
        let (out, c) = run(&[(0, SYN, b""), (1, ACK, b"a"), (100 << 20, ACK, b"junk")], TcpLimits::default());
        assert_eq!(out, b"a");
        assert_eq!(c.out_of_window, 1);
    }
}
