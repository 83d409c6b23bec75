//! Live tests of the XDP capture: the sensor attached to one end of a veth pair standing in
//! for a SPAN port, tcpreplay sending a generated, labelled mix into the other end. They
//! assert exact counters and that the written pcap holds exactly the kept input frames,
//! byte for byte. Root is needed; `cargo xtask test` provides it and makes a missing
//! prerequisite a failure instead of a skip.

use std::{
    path::{Path, PathBuf},
    thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tap_testkit::{
    frame::{self, Tags, L4},
    mix::{self, Labelled, Verdict},
    netns::{live_or_skip, SpanPair},
    pcap,
    sensor::SensorProcess,
};

/// Replay rate for exact-count tests: far below what the sensor handles, so any loss is a bug.
const EXACT_PPS: u32 = 4000;

use tap_testkit::TempDir;

fn start_sensor(pair: &SpanPair, args: &[&str]) -> SensorProcess {
    let mut all = vec!["--ring-mib", "4"];
    all.extend_from_slice(args);
    SensorProcess::start(Path::new(env!("CARGO_BIN_EXE_tap-sensor")), pair, &all).unwrap()
}

fn count(mix: &[Labelled], v: Verdict) -> u64 {
    mix.iter().filter(|l| l.verdict == v).count() as u64
}

fn write_input(dir: &TempDir, frames: &[Vec<u8>]) -> PathBuf {
    let path = dir.path("input.pcap");
    pcap::write(&path, frames, Duration::from_secs(1_795_000_000)).unwrap();
    path
}

/// Replays the mix and checks counters and written bytes; `snaplen` None means full frames;
/// `record_only` runs the sensor as a recorder, which must write the same and analyse nothing.
fn check_mix(mode: &str, snaplen: Option<usize>, record_only: bool) {
    let test = format!(
        "mix_{mode}_{}{}",
        snaplen.map_or("full".into(), |s| s.to_string()),
        if record_only { "_rec" } else { "" }
    );
    if !live_or_skip(&test) {
        return;
    }
    let dir = TempDir::new(&format!("live-{test}"));
    let mix = mix::mix(12);
    let input = write_input(&dir, &mix.iter().map(|l| l.frame.clone()).collect::<Vec<_>>());
    let output = dir.path("kept.pcap");
    let pair = SpanPair::create("mix").unwrap();
    let snap_arg = snaplen.map(|s| s.to_string());
    let mut args = vec!["--dc", mix::DC_ARGS, "--xdp-mode", mode, "--write", output.to_str().unwrap()];
    if let Some(s) = &snap_arg {
        args.extend(["--snaplen", s.as_str()]);
    }
    if record_only {
        args.push("--record-only");
    }
    let sensor = start_sensor(&pair, &args);
    let replay_started = SystemTime::now();
    let sent = pair.replay(&input, Some(EXACT_PPS), 1).unwrap();
    assert_eq!(sent, mix.len() as u64, "tcpreplay sent every frame");
    let replay_ended = SystemTime::now();
    thread::sleep(Duration::from_millis(300));
    let c = sensor.stop().unwrap();

    let kept = count(&mix, Verdict::Kept);
    let cut = |f: &[u8]| f[..snaplen.unwrap_or(usize::MAX).min(f.len())].to_vec();
    let expected_truncated =
        mix.iter().filter(|l| l.verdict == Verdict::Kept && snaplen.is_some_and(|s| l.frame.len() > s)).count() as u64;
    assert_eq!(c.get("xdp_seen"), mix.len() as u64, "seen");
    assert_eq!(c.get("xdp_kept"), kept, "kept");
    assert_eq!(c.get("xdp_filtered"), count(&mix, Verdict::Filtered), "filtered");
    assert_eq!(c.get("xdp_malformed"), count(&mix, Verdict::Malformed), "malformed");
    assert_eq!(c.get("xdp_ring_full"), 0, "ring full");
    assert_eq!(c.get("xdp_truncated"), expected_truncated, "truncated");
    assert_eq!(c.get("user_frames_read"), kept, "frames read from the rings");
    assert_eq!(c.get("user_frames_channel_full"), 0);
    assert_eq!(c.get("user_frames_consumed"), kept);
    assert_eq!(c.get("decode_frames"), if record_only { 0 } else { kept }, "frames through the pipeline");

    let written = pcap::read(&output).unwrap();
    // The program stamps frames with wall-clock time (bpf_ktime_get_ns plus the offset the
    // sensor set): every frame falls within the replay, give or take the clocks' sampling.
    let since_epoch = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap();
    let window = since_epoch(replay_started) - Duration::from_millis(100)
        ..=since_epoch(replay_ended) + Duration::from_millis(100);
    for w in &written {
        assert!(w.data.len() <= snaplen.unwrap_or(usize::MAX));
        assert!(window.contains(&w.timestamp), "frame stamped {:?}, outside the replay {window:?}", w.timestamp);
    }
    let mut orig: Vec<(u32, Vec<u8>)> = written.iter().map(|w| (w.orig_len, w.data.clone())).collect();
    let mut want: Vec<(u32, Vec<u8>)> =
        mix.iter().filter(|l| l.verdict == Verdict::Kept).map(|l| (l.frame.len() as u32, cut(&l.frame))).collect();
    orig.sort();
    want.sort();
    assert_eq!(orig.len(), want.len(), "frames written");
    for (i, (got, exp)) in orig.iter().zip(&want).enumerate() {
        assert_eq!(got, exp, "written frame {i} differs from the input");
    }
}

#[test]
fn native_mode_keeps_exactly_the_dc_frames() {
    check_mix("native", None, false);
}

#[test]
fn the_recorder_writes_the_same_frames_and_analyses_none() {
    check_mix("native", None, true);
}

#[test]
fn generic_mode_keeps_exactly_the_dc_frames() {
    check_mix("generic", None, false);
}

#[test]
fn snaplen_truncates_and_keeps_the_wire_length() {
    check_mix("native", Some(96), false);
}

/// The DC list changes (file + SIGHUP) while traffic to two DCs flows: frames to the old DC
/// stop being kept and frames to the new one start, with nothing else kept at any time.
#[test]
fn dc_set_changes_while_traffic_flows() {
    if !live_or_skip("dc_set_changes_while_traffic_flows") {
        return;
    }
    let dir = TempDir::new("dcswitch");
    let old_dc = "10.0.0.10".parse().unwrap();
    let new_dc = "10.0.0.11".parse().unwrap();
    let bystander = "10.0.0.12".parse().unwrap();
    let client = mix::CLIENT4;
    let frames: Vec<Vec<u8>> = (0..3000u32)
        .map(|i| {
            let dst = [old_dc, new_dc, bystander][(i % 3) as usize];
            frame::ipv4(Tags::None, client, dst, L4::Tcp { src: 40000, dst: 88 }, 64, i)
        })
        .collect();
    let input = write_input(&dir, &frames);
    let dc_file = dir.path("dcs.txt");
    std::fs::write(&dc_file, "# before\n10.0.0.10\n").unwrap();
    let output = dir.path("kept.pcap");
    let pair = SpanPair::create("dcsw").unwrap();
    let sensor = start_sensor(&pair, &["--dc-file", dc_file.to_str().unwrap(), "--write", output.to_str().unwrap()]);

    // 3000 frames at 2000 pps: 1.5 s of traffic, the switch about half-way.
    let replay = {
        let input = input.clone();
        let gen_ns = pair.gen_ns.clone();
        thread::spawn(move || {
            let out = SpanPair::command_in(&gen_ns, "tcpreplay")
                .args(["-i", "gen0", "--pps=2000"])
                .arg(&input)
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            tap_testkit::netns::parse_tcpreplay_sent(&String::from_utf8_lossy(&out.stdout)).unwrap()
        })
    };
    thread::sleep(Duration::from_millis(700));
    std::fs::write(&dc_file, "# after\n10.0.0.11\n").unwrap();
    sensor.signal("HUP").unwrap();
    assert_eq!(replay.join().unwrap(), 3000);
    thread::sleep(Duration::from_millis(300));
    let c = sensor.stop().unwrap();

    let written = pcap::read(&output).unwrap();
    let dst_of = |f: &pcap::PcapFrame| std::net::Ipv4Addr::new(f.data[30], f.data[31], f.data[32], f.data[33]);
    // Frames are compared by their place in the input (its index is the IP identification),
    // not by capture time: a generator descheduled on a busy machine leaves a pause in the
    // traffic that is no gap in the filter.
    let index_of = |f: &pcap::PcapFrame| u16::from_be_bytes([f.data[18], f.data[19]]) as usize;
    let mut seq: Vec<(usize, std::net::Ipv4Addr)> = written.iter().map(|f| (index_of(f), dst_of(f))).collect();
    seq.sort();
    assert!(seq.iter().all(|&(i, d)| d == [old_dc, new_dc, bystander][i % 3]), "every kept frame is the input's");
    let old: Vec<usize> = seq.iter().filter(|(_, d)| *d == old_dc).map(|(i, _)| *i).collect();
    let new: Vec<usize> = seq.iter().filter(|(_, d)| *d == new_dc).map(|(i, _)| *i).collect();
    assert!(seq.iter().all(|(_, d)| *d == old_dc || *d == new_dc), "only DC frames kept");
    assert!(old.len() > 200 && new.len() > 200, "both DCs kept for a while: old {} new {}", old.len(), new.len());
    // Before the switch every old-DC frame is kept, after it every new-DC frame.
    let (last_old, first_new) = (*old.last().unwrap(), *new.first().unwrap());
    assert_eq!(old, (0..=last_old).step_by(3).collect::<Vec<_>>(), "old DC kept without a hole until the switch");
    assert_eq!(new, (first_new..3000).step_by(3).collect::<Vec<_>>(), "new DC kept without a hole after the switch");
    // The update adds the new DC before removing the old one, so they may overlap only for
    // the moment the update takes (100 frames are 50 ms at 2000 frames/s). A moment with
    // neither DC watched shows as a new-DC frame missed after an old-DC frame missed:
    // first_new - 3 > last_old + 3.
    assert!(last_old < first_new + 100, "old DC still kept {} frames after the new one started", last_old - first_new);
    assert!(
        first_new <= last_old + 6,
        "frame {} (old DC) was dropped before frame {} (new DC): neither DC was watched between",
        last_old + 3,
        first_new - 3
    );
    assert_eq!(c.get("xdp_seen"), 3000);
    assert_eq!(c.get("xdp_kept") + c.get("xdp_filtered"), 3000);
    assert_eq!(c.get("xdp_kept"), written.len() as u64);
    assert_eq!((old.len() + new.len()) as u64, c.get("xdp_kept"));
}

/// Requests sent from one CPU and their replies from another land in different per-CPU
/// rings; the sensor must still hand them on in capture order, every reply after its
/// request (a reply first breaks request/response pairing in the parsers).
#[test]
fn replies_captured_on_another_cpu_stay_after_their_requests() {
    if !live_or_skip("replies_captured_on_another_cpu_stay_after_their_requests") {
        return;
    }
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        tap_testkit::skip::skipped(
            "replies_captured_on_another_cpu_stay_after_their_requests",
            "this machine has one CPU, so one ring",
        );
        return;
    }
    let dir = TempDir::new("order");
    let (client, dc) = (mix::CLIENT4, "10.0.0.10".parse().unwrap());
    // 400 exchanges on distinct client ports: request i from CPU 0, reply i from CPU 1.
    let frames: Vec<Vec<u8>> = (0..800u32)
        .map(|i| {
            let port = 40_000 + (i / 2) as u16;
            if i % 2 == 0 {
                frame::ipv4(Tags::None, client, dc, L4::Tcp { src: port, dst: 88 }, 64, i)
            } else {
                frame::ipv4(Tags::None, dc, client, L4::Tcp { src: 88, dst: port }, 64, i)
            }
        })
        .collect();
    let output = dir.path("kept.pcap");
    let pair = SpanPair::create("order").unwrap();
    let sensor = start_sensor(&pair, &["--dc", "10.0.0.10", "--write", output.to_str().unwrap()]);
    pair.send_from_cpus(frames, |i| i % 2).unwrap();
    thread::sleep(Duration::from_millis(400));
    let c = sensor.stop().unwrap();
    assert_eq!(c.get("xdp_kept"), 800);
    let written = pcap::read(&output).unwrap();
    assert_eq!(written.len(), 800);
    let port_of = |f: &pcap::PcapFrame| {
        let (src, dst) = (u16::from_be_bytes([f.data[34], f.data[35]]), u16::from_be_bytes([f.data[36], f.data[37]]));
        if dst == 88 {
            (src, false)
        } else {
            (dst, true)
        }
    };
    let mut requested = std::collections::HashSet::new();
    let mut late = Vec::new();
    for (n, f) in written.iter().enumerate() {
        let (port, is_reply) = port_of(f);
        if !is_reply {
            requested.insert(port);
        } else if !requested.contains(&port) {
            late.push((n, port));
        }
    }
    assert!(
        late.is_empty(),
        "{} replies handed on before their request, first {:?}",
        late.len(),
        &late[..late.len().min(5)]
    );
    assert!(written.windows(2).all(|w| w[0].timestamp <= w[1].timestamp), "frames out of capture order");
}

/// `--evidence-dir` keeps every kept frame, the same bytes `--write` writes, in files of
/// 1 MiB (the floor) that a 2 MiB bound prunes oldest first; what is left is the newest
/// traffic, whole, and the cutter finds one conversation in it, both directions.
#[test]
fn the_evidence_ring_keeps_the_frames_rotates_and_prunes_within_its_bound() {
    if !live_or_skip("the_evidence_ring_keeps_the_frames_rotates_and_prunes_within_its_bound") {
        return;
    }
    let dir = TempDir::new("evidence");
    let evidence = dir.path("evidence");
    let (client, dc) = (mix::CLIENT4, "10.0.0.10".parse().unwrap());
    // 4000 frames of about 1.1 kB (4.4 MB), four conversations, requests and replies.
    let frames: Vec<Vec<u8>> = (0..4000u32)
        .map(|i| {
            let port = 40_000 + (i % 8 / 2) as u16;
            if i % 2 == 0 {
                frame::ipv4(Tags::None, client, dc, L4::Tcp { src: port, dst: 88 }, 1100, i)
            } else {
                frame::ipv4(Tags::Dot1Q(7), dc, client, L4::Tcp { src: 88, dst: port }, 1100, i)
            }
        })
        .collect();
    let input = write_input(&dir, &frames);
    let output = dir.path("kept.pcap");
    let pair = SpanPair::create("evid").unwrap();
    let sensor = start_sensor(
        &pair,
        &[
            "--dc",
            "10.0.0.10",
            "--write",
            output.to_str().unwrap(),
            "--evidence-dir",
            evidence.to_str().unwrap(),
            "--evidence-max-mb",
            "2",
        ],
    );
    assert_eq!(pair.replay(&input, Some(EXACT_PPS), 1).unwrap(), 4000);
    thread::sleep(Duration::from_millis(300));
    let c = sensor.stop().unwrap();
    assert_eq!(c.get("xdp_kept"), 4000);
    assert_eq!(c.get("evidence_write_errors"), 0);

    let files = tap_user::evidence::list_files(&evidence).unwrap();
    let on_disk: u64 = files.iter().map(|(_, _, size)| size).sum();
    assert_eq!(c.get("evidence_bytes"), on_disk);
    assert!(on_disk <= 2 << 20, "{on_disk} bytes of evidence over the 2 MiB bound");
    assert!(on_disk > 1 << 20, "only {on_disk} bytes of evidence left");
    assert!(files.len() >= 2 && files.iter().all(|(_, _, size)| *size <= 1 << 20), "{files:?}");
    assert!(c.get("evidence_files_pruned") >= 2, "pruned {}", c.get("evidence_files_pruned"));

    // The files, oldest first, hold the newest frames of --write's file, byte for byte and
    // in the same order, each file named after its first frame's capture time.
    let written = pcap::read(&output).unwrap();
    assert_eq!(written.len(), 4000);
    let mut kept = Vec::new();
    for (start, path, _) in &files {
        let in_file = pcap::read(path).unwrap();
        assert_eq!(in_file[0].timestamp.as_nanos() as u64, *start, "{}", path.display());
        kept.extend(in_file);
    }
    let tail = &written[written.len() - kept.len()..];
    assert!(
        kept.iter().zip(tail).all(|(k, w)| k.timestamp == w.timestamp && k.orig_len == w.orig_len && k.data == w.data),
        "the evidence is not the newest {} frames of --write's file",
        kept.len()
    );

    // One conversation, both directions (the replies VLAN-tagged), out of the whole ring.
    let req = tap_user::evidence::Wanted {
        client_ip: client.to_string(),
        client_port: 40_001,
        dc_ip: dc.to_string(),
        dc_port: 88,
        from_unix_ns: 0,
        to_unix_ns: i64::MAX,
    };
    let excerpt = tap_user::evidence::cut(&evidence, &req, tap_user::evidence::EXCERPT_MAX_BYTES);
    assert_eq!((excerpt.error.as_str(), excerpt.truncated), ("", false));
    let cut_path = dir.path("excerpt.pcap");
    std::fs::write(&cut_path, &excerpt.pcap).unwrap();
    let got = pcap::read(&cut_path).unwrap();
    let port_of = |f: &pcap::PcapFrame| {
        let l4 = if f.data[12..14] == [0x81, 0x00] { 38 } else { 34 };
        let (src, dst) =
            (u16::from_be_bytes([f.data[l4], f.data[l4 + 1]]), u16::from_be_bytes([f.data[l4 + 2], f.data[l4 + 3]]));
        if dst == 88 {
            src
        } else {
            dst
        }
    };
    let want: Vec<&pcap::PcapFrame> = kept.iter().filter(|f| port_of(f) == 40_001).collect();
    assert_eq!(excerpt.frames as usize, want.len());
    assert!(want.len() > 100);
    assert!(got.iter().zip(&want).all(|(g, w)| g.data == w.data && g.timestamp == w.timestamp));
    assert!(got.iter().any(|f| f.data[12..14] == [0x81, 0x00]) && got.iter().any(|f| f.data[12..14] == [0x08, 0x00]));
}
