//! A user's own capture files are read with the right times, whatever wrote them: the
//! project's lab capture (classic pcap in microseconds, as tcpdump writes it) rewritten by
//! Wireshark's editcap as pcapng in microseconds (its default, which says so with
//! if_tsresol), classic pcap in nanoseconds and pcapng in nanoseconds, and as classic pcap
//! of the other byte order, gives the same events at the same times, each the time of a
//! frame as tshark reads it; so does the same file read from a pipe.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

const TEST: &str = "every_capture_format_gives_the_same_events_at_the_same_times";

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dctap-formats-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn tool_works(program: &str, arg: &str) -> bool {
    Command::new(program).arg(arg).output().is_ok_and(|o| o.status.success())
}

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// `tap-sensor --read <input> --json`, the events as JSON lines; `-` feeds `bytes` on stdin.
fn events(input: &Path, stdin: Option<Vec<u8>>) -> Vec<String> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tap-sensor"));
    cmd.arg("--read").arg(input).args(["--json", "--sensor-id", "formats"]);
    let out = match stdin {
        None => run(&mut cmd),
        Some(bytes) => {
            let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
            let mut pipe = child.stdin.take().unwrap();
            let feeder = std::thread::spawn(move || std::io::Write::write_all(&mut pipe, &bytes));
            let out = child.wait_with_output().unwrap();
            feeder.join().unwrap().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            out
        }
    };
    String::from_utf8(out.stdout).unwrap().lines().map(String::from).collect()
}

/// A classic pcap file with every header field in the other byte order.
fn byte_swapped(classic: &[u8]) -> Vec<u8> {
    let mut out = classic.to_vec();
    let swap32 = |b: &mut [u8]| b.reverse();
    let little = u32::from_le_bytes(classic[0..4].try_into().unwrap()) == 0xa1b2_c3d4;
    assert!(little, "the lab capture is little-endian microsecond pcap");
    let word = |b: &[u8]| u32::from_le_bytes(b.try_into().unwrap()) as usize;
    // Magic, version (two u16), thiszone, sigfigs, snaplen, link type.
    swap32(&mut out[0..4]);
    out[4..6].reverse();
    out[6..8].reverse();
    for at in [8, 12, 16, 20] {
        swap32(&mut out[at..at + 4]);
    }
    let mut at = 24;
    while at + 16 <= classic.len() {
        let len = word(&classic[at + 8..at + 12]);
        for field in 0..4 {
            swap32(&mut out[at + 4 * field..at + 4 * field + 4]);
        }
        at += 16 + len;
    }
    assert_eq!(at, classic.len(), "the records end where the file ends");
    out
}

#[test]
fn every_capture_format_gives_the_same_events_at_the_same_times() {
    let missing = ["editcap", "capinfos", "tshark"].into_iter().find(|t| !tool_works(t, "--version"));
    if !tap_testkit::skip::unless_missing(
        TEST,
        missing.map(|t| format!("{t} (Debian packages tshark, wireshark-common) is not installed")),
    ) {
        return;
    }
    let source = tap_testkit::shared::project_lab_capture("04_asrep_roasting").path;
    let reference = events(&source, None);
    assert!(reference.len() > 10, "the capture gives {} events", reference.len());

    // Every event is dated at one of the capture's frames, as tshark reads them.
    let out = run(Command::new("tshark").arg("-r").arg(&source).args(["-T", "fields", "-e", "frame.time_epoch"]));
    let frame_ns: BTreeSet<u64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let (secs, frac) = l.trim().split_once('.').unwrap();
            secs.parse::<u64>().unwrap() * 1_000_000_000 + format!("{frac:0<9}")[..9].parse::<u64>().unwrap()
        })
        .collect();
    for e in &reference {
        let v: serde_json::Value = serde_json::from_str(e).unwrap();
        let t = v["time_unix_ns"].as_u64().unwrap();
        assert!(frame_ns.contains(&t), "event at {t} ns is at no frame of the capture: {e}");
    }

    let pcapng_usec = temp("usec.pcapng");
    let pcap_nsec = temp("nsec.pcap");
    let pcapng_nsec = temp("nsec.pcapng");
    let swapped = temp("swapped.pcap");
    run(Command::new("editcap").args(["-F", "pcapng"]).arg(&source).arg(&pcapng_usec));
    run(Command::new("editcap").args(["-F", "nsecpcap"]).arg(&source).arg(&pcap_nsec));
    run(Command::new("editcap").args(["-F", "pcapng"]).arg(&pcap_nsec).arg(&pcapng_nsec));
    std::fs::write(&swapped, byte_swapped(&std::fs::read(&source).unwrap())).unwrap();
    // The nanosecond files really are: their magic, and tshark's reading of the pcapng.
    assert_eq!(std::fs::read(&pcap_nsec).unwrap()[0..4], 0xa1b2_3c4du32.to_le_bytes());
    let precision = |f: &Path| String::from_utf8(run(Command::new("capinfos").arg(f)).stdout).unwrap();
    assert!(precision(&pcapng_nsec).contains("Time resolution = 0x09"), "{}", precision(&pcapng_nsec));
    assert!(precision(&pcapng_usec).contains("precision:  microseconds (6)"), "{}", precision(&pcapng_usec));
    for file in [&pcapng_usec, &pcap_nsec, &pcapng_nsec, &swapped] {
        assert_eq!(events(file, None), reference, "{} is read with other events or times", file.display());
    }
    let piped = events(Path::new("-"), Some(std::fs::read(&pcapng_usec).unwrap()));
    assert_eq!(piped, reference, "pcapng from a pipe");
    let piped = events(Path::new("/dev/stdin"), Some(std::fs::read(&source).unwrap()));
    assert_eq!(piped, reference, "classic pcap from /dev/stdin");
    let _ = std::fs::remove_dir_all(pcapng_usec.parent().unwrap());
}
