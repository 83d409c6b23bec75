//! Splitting one direction of a TCP stream (or a named pipe) into the records of a
//! protocol: a partial record waits for the rest, a record longer than a limit is skipped
//! without being buffered, and a header that cannot be right gives the direction up.
//! After a gap the framer seeks: it drops bytes until the protocol recognises the start of
//! a record, and frames again from there. Each protocol supplies how to read its header
//! and what a record start looks like.

use crate::budget::{stream_budget, Budget};

/// What a protocol's header says about the bytes at the start of a slice.
pub enum Header {
    /// Not enough bytes to tell.
    Incomplete,
    /// A record of `total` bytes, header included, whose payload starts at `header`.
    Record { header: usize, total: usize },
    /// The stream is no longer made of records from here (e.g. SASL-wrapped LDAP).
    Foreign,
    /// Not this protocol's framing: the direction is given up.
    Broken,
}

pub enum Framed<'a> {
    Record {
        payload: &'a [u8],
        whole: &'a [u8],
    },
    /// A record over the limit, skipped: its first bytes and its full length.
    Oversized {
        head: &'a [u8],
        total: usize,
    },
    /// The rest of the buffered bytes after the stream turned `Header::Foreign`.
    Foreign(&'a [u8]),
}

#[derive(Debug, Default)]
pub struct Framer {
    buf: Vec<u8>,
    /// The budget `buf`'s allocation is held against (the thread's stream budget when the
    /// first partial record was kept), and how much of it.
    budget: Option<Budget>,
    held: usize,
    /// Bytes of an oversized record still to skip.
    skip: usize,
    lost: bool,
    /// After a gap: the bytes since, held only while too few to tell whether a record
    /// starts in them.
    seeking: Option<Vec<u8>>,
}

/// What a protocol says about the bytes at some offset after a gap.
pub enum Start {
    /// A record starts here.
    Yes,
    No,
    /// Too few bytes to tell.
    NeedMore,
}

/// Most bytes held while seeking a record start: a start is recognised within its first
/// few dozen bytes, so only a tail that short is ever waiting.
const MAX_SEEK_HOLD: usize = 256;

/// How much of an oversized record is handed on (enough for any header).
const OVERSIZED_HEAD: usize = 64;

impl Drop for Framer {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.give(self.held);
        }
    }
}

impl Framer {
    /// Feeds bytes; `header` reads a record header; records longer than `max` bytes are
    /// skipped; after a gap, framing starts again where `starts` recognises a record.
    pub fn push(
        &mut self,
        data: &[u8],
        max: usize,
        header: impl Fn(&[u8]) -> Header,
        starts: impl Fn(&[u8]) -> Start,
        out: &mut dyn FnMut(Framed<'_>),
    ) {
        if self.seeking.is_some() {
            if let Some(from) = self.seek(data, starts) {
                self.frame(&from, max, header, out);
            }
            return;
        }
        self.frame(data, max, header, out);
    }

    fn frame(&mut self, data: &[u8], max: usize, header: impl Fn(&[u8]) -> Header, out: &mut dyn FnMut(Framed<'_>)) {
        if self.lost {
            return;
        }
        let mut data = data;
        if self.skip > 0 {
            let n = self.skip.min(data.len());
            self.skip -= n;
            data = &data[n..];
        }
        if self.buf.is_empty() {
            // Nothing held back: records are handed on straight from `data`, and only an
            // incomplete tail is copied.
            let at = self.records(data, max, &header, out);
            if at < data.len() {
                self.buf.extend_from_slice(&data[at..]);
            }
            self.account();
            return;
        }
        self.buf.extend_from_slice(data);
        let buf = std::mem::take(&mut self.buf);
        let at = self.records(&buf, max, &header, out);
        self.buf = buf;
        self.buf.drain(..at);
        if self.buf.is_empty() {
            self.buf = Vec::new();
        }
        self.account();
    }

    /// Holds the partial record's allocation against the stream budget all workers share;
    /// when it is spent the partial record is let go as a gap would lose it (the framer
    /// seeks the next record), and counted, so a flood of half-sent messages cannot grow
    /// the sensor past its bound.
    fn account(&mut self) {
        let now = self.buf.capacity();
        if now == self.held {
            return;
        }
        if self.budget.is_none() {
            self.budget = stream_budget();
        }
        let Some(budget) = &self.budget else { return };
        if now < self.held {
            budget.give(self.held - now);
        } else if !budget.try_take(now - self.held) {
            budget.refuse(self.buf.len());
            budget.give(self.held);
            self.held = 0;
            self.gap();
            return;
        }
        self.held = now;
    }

    /// Hands on the records at the start of `bytes`; returns how many bytes were used up
    /// (all of them when the stream was given up or an oversized record is being skipped).
    fn records(
        &mut self,
        bytes: &[u8],
        max: usize,
        header: &impl Fn(&[u8]) -> Header,
        out: &mut dyn FnMut(Framed<'_>),
    ) -> usize {
        let mut at = 0;
        while at < bytes.len() {
            let rest = &bytes[at..];
            match header(rest) {
                Header::Incomplete => break,
                Header::Record { header, total } if total == 0 || total < header => {
                    self.lost = true;
                    at = bytes.len();
                }
                Header::Record { total, .. } if total > max => {
                    out(Framed::Oversized { head: &rest[..rest.len().min(OVERSIZED_HEAD)], total });
                    self.skip = total - rest.len().min(total);
                    at = bytes.len();
                }
                Header::Record { header, total } => {
                    if rest.len() < total {
                        break;
                    }
                    out(Framed::Record { payload: &rest[header..total], whole: &rest[..total] });
                    at += total;
                }
                Header::Foreign => {
                    out(Framed::Foreign(rest));
                    self.lost = true;
                    at = bytes.len();
                }
                Header::Broken => {
                    self.lost = true;
                    at = bytes.len();
                }
            }
        }
        at
    }

    /// Bytes went missing: nothing buffered can be trusted, and the direction is given up
    /// until `resume`, or until `seek` finds a record start in what follows.
    pub fn gap(&mut self) {
        self.buf = Vec::new();
        if let Some(budget) = &self.budget {
            budget.give(self.held);
        }
        self.held = 0;
        self.skip = 0;
        self.lost = true;
        self.seeking = Some(Vec::new());
    }

    /// Starts again from a point the caller knows to be a record start.
    pub fn resume(&mut self) {
        self.lost = false;
        self.seeking = None;
    }

    /// Whether the framer lost its place in a gap and is looking for a record start.
    pub fn seeking(&self) -> bool {
        self.seeking.is_some()
    }

    /// After a gap: the bytes from the first record start that `starts` recognises in what
    /// has come since (the framer then resumes and frames them), or None while none is
    /// found yet. A direction given up for another reason (a broken header, SASL-sealed
    /// LDAP) does not seek.
    fn seek(&mut self, data: &[u8], starts: impl Fn(&[u8]) -> Start) -> Option<Vec<u8>> {
        let held = self.seeking.as_mut()?;
        held.extend_from_slice(data);
        let mut keep_from = held.len();
        for i in 0..held.len() {
            match starts(&held[i..]) {
                Start::Yes => {
                    let from = held.split_off(i);
                    self.resume();
                    return Some(from);
                }
                Start::No => {}
                Start::NeedMore => {
                    keep_from = i;
                    break;
                }
            }
        }
        held.drain(..keep_from.max(held.len().saturating_sub(MAX_SEEK_HOLD)));
        None
    }

    pub fn lost(&self) -> bool {
        self.lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 1-byte length prefix, records over 8 bytes skipped, 0xff breaks, 0xee is foreign.
    fn header(b: &[u8]) -> Header {
        match b.first() {
            None => Header::Incomplete,
            Some(0xff) => Header::Broken,
            Some(0xee) => Header::Foreign,
            Some(&n) => Header::Record { header: 1, total: 1 + n as usize },
        }
    }

    fn run(chunks: &[&[u8]]) -> (Vec<String>, bool) {
        let mut f = Framer::default();
        let mut out = Vec::new();
        for c in chunks {
            f.push(c, 9, header, |_: &[u8]| Start::No, &mut |fr| {
                out.push(match fr {
                    Framed::Record { payload, .. } => format!("rec {payload:?}"),
                    Framed::Oversized { total, .. } => format!("over {total}"),
                    Framed::Foreign(rest) => format!("foreign {}", rest.len()),
                })
            });
        }
        (out, f.lost())
    }

    /// Partial records held by any framer count against the stream budget of the workers;
    /// when it is spent a framer lets its partial record go and seeks the next one, and
    /// what each held is given back when it completes or the framer goes.
    #[test]
    fn partial_records_are_held_against_the_shared_budget() {
        // Records of up to 255 bytes, none over the limit.
        let header = |b: &[u8]| match b.first() {
            None => Header::Incomplete,
            Some(&n) => Header::Record { header: 1, total: 1 + n as usize },
        };
        let budget = Budget::new(300);
        crate::budget::set_stream_budget(Some(budget.clone()));
        let mut got = 0;
        let mut push =
            |f: &mut Framer, data: &[u8]| f.push(data, 1000, header, |_: &[u8]| Start::Yes, &mut |_| got += 1);
        let mut first = Framer::default();
        let mut second = Framer::default();
        push(&mut first, &[200; 150]);
        assert!(budget.used() >= 150 && budget.used() <= 300, "{}", budget.used());
        push(&mut second, &[250; 200]);
        assert!(second.seeking(), "no room left: the partial record is let go");
        assert_eq!(budget.refused(), 200);
        push(&mut first, &[0; 51]);
        assert_eq!(budget.used(), 0, "complete: nothing held");
        push(&mut first, &[100; 60]);
        assert!(budget.used() > 0);
        drop(first);
        assert_eq!(budget.used(), 0, "given back with the framer");
        crate::budget::set_stream_budget(None);
    }

    #[test]
    fn records_split_across_pushes_and_oversized_ones_are_skipped() {
        let (out, lost) = run(&[&[2, 7], &[8, 1], &[9], &[10, 0, 0, 0, 0], &[0, 0, 0, 0, 0, 0, 1, 6]]);
        assert_eq!(out, vec!["rec [7, 8]", "rec [9]", "over 11", "rec [6]"]);
        assert!(!lost);
    }

    /// After a gap, bytes are dropped up to the first record start the protocol
    /// recognises (here: a length byte of 1 or 2 followed by 0xaa), held only while too
    /// few to tell, and framing resumes there.
    #[test]
    fn after_a_gap_framing_resumes_at_the_next_record_start() {
        let starts = |b: &[u8]| match b {
            [] | [1 | 2] => Start::NeedMore,
            [1 | 2, 0xaa, ..] => Start::Yes,
            _ => Start::No,
        };
        let mut f = Framer::default();
        let mut out = Vec::new();
        let push = |f: &mut Framer, data: &[u8], out: &mut Vec<Vec<u8>>| {
            f.push(data, 9, header, starts, &mut |fr| {
                if let Framed::Record { payload, .. } = fr {
                    out.push(payload.to_vec());
                }
            });
        };
        push(&mut f, &[1, 0xaa, 2, 0xaa], &mut out);
        f.gap();
        assert!(f.lost() && f.seeking());
        // The tail of a record cut by the gap, then a start split over two pushes.
        push(&mut f, &[7, 7, 9, 2], &mut out);
        assert!(f.seeking(), "a lone length byte cannot be told yet");
        push(&mut f, &[0xaa, 5, 1, 0xaa], &mut out);
        assert!(!f.lost() && !f.seeking());
        assert_eq!(out, vec![vec![0xaa], vec![0xaa, 5], vec![0xaa]]);
        // Held bytes stay bounded however long nothing starts.
        let mut g = Framer::default();
        g.gap();
        for _ in 0..1000 {
            assert!(g.seek(&[9; 1000], starts).is_none());
        }
        assert!(g.seeking.as_ref().unwrap().len() <= MAX_SEEK_HOLD);
    }

    #[test]
    fn broken_and_foreign_streams_stop() {
        assert_eq!(run(&[&[1, 5, 0xff, 1, 2], &[1, 3]]), (vec!["rec [5]".to_string()], true));
        assert_eq!(run(&[&[1, 5, 0xee, 1, 2]]), (vec!["rec [5]".to_string(), "foreign 3".to_string()], true));
    }
}
