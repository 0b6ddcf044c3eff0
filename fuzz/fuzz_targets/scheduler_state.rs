//! The scheduler's state machine driven by a sequence of member calls:
//! announcements, registrations, piece and digest reports, failure reports
//! (forgery accusations included), results, leaves, tag and anonymous-read
//! reports, sweeps, with time moving forward between them.
//!
//! Input: a stream of operations. Each takes an opcode byte, a host and a
//! task (from small sets, so calls meet the same hosts and tasks), then the
//! bytes its fields need; field values (bitmaps, digests, piece indices,
//! shapes, URLs) come from the input as they are, valid or not.
//! Invariants: no panic; answers name no parent that is the caller itself,
//! or quarantined; at most `max_parents` parents; recorded
//! digests come back well formed and at most `MAX_PER_CALL` a call; a
//! host accused by two distinct reporters of a forgery against the record
//! is never offered again while quarantined.
#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use proto::{
    GetPieceDigestsRequest, Host, HostType, PieceDigest, RegisterPeerRequest,
    ReportParentFailureRequest, ReportPeerResultRequest, ReportPiecesRequest, TaskShape,
};
use scheduler::metrics::Metrics;
use scheduler::state::{Settings, State};

const HOSTS: [&str; 5] = ["h0", "h1", "h2", "h3", "seed"];
const TASKS: [&str; 3] = [
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
    "not a task id",
];
const MAX_PARENTS: usize = 3;

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*first)
    }
    fn u32(&mut self) -> u32 {
        let mut v = 0u32;
        for _ in 0..4 {
            v = (v << 8) | u32::from(self.byte().unwrap_or(0));
        }
        v
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = usize::from(self.byte().unwrap_or(0))
            .min(max)
            .min(self.0.len());
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        taken.to_vec()
    }
    fn text(&mut self, max: usize) -> String {
        String::from_utf8_lossy(&self.bytes(max)).into_owned()
    }
    /// A digest: mostly one of a few well-formed ones, sometimes raw text.
    fn digest(&mut self) -> String {
        match self.byte().unwrap_or(0) % 5 {
            4 => self.text(80),
            c => format!("sha256:{}", char::from(b'a' + c).to_string().repeat(64)),
        }
    }
    fn pick<'b>(&mut self, from: &[&'b str]) -> &'b str {
        from[usize::from(self.byte().unwrap_or(0)) % from.len()]
    }
}

fn host(id: &str, seed: bool, port: u32) -> Host {
    Host {
        id: id.into(),
        hostname: id.into(),
        ip: "10.0.0.1".into(),
        peer_port: port % 70_000,
        r#type: if seed {
            HostType::Seed
        } else {
            HostType::Normal
        } as i32,
        upload_capacity: 4,
        free_upload_slots: 4,
        ..Host::default()
    }
}

fn shape(input: &mut Input) -> Option<TaskShape> {
    (input.byte().unwrap_or(0) % 2 == 0).then(|| TaskShape {
        content_length: u64::from(input.u32()),
        piece_length: input.u32(),
        piece_count: input.u32(),
        known: true,
    })
}

fuzz_target!(|data: &[u8]| {
    let settings = Settings {
        max_parents: MAX_PARENTS,
        host_ttl: Duration::from_secs(10),
        task_idle_ttl: Duration::from_secs(60),
        tag_ttl: Duration::from_secs(60),
    };
    let mut state = State::new(settings, Arc::new(Metrics::new()));
    let mut now = Instant::now();
    let mut input = Input(data);
    let mut calls = 0;
    while let Some(op) = input.byte() {
        calls += 1;
        if calls > 256 {
            break;
        }
        let host_id = input.pick(&HOSTS);
        let task_id = input.pick(&TASKS);
        let answer = match op % 12 {
            0 => {
                let seed = host_id == "seed";
                let port = input.u32();
                let _ = state.announce_host(Some(host(host_id, seed, port)), now);
                None
            }
            1 => {
                let req = RegisterPeerRequest {
                    task_id: task_id.into(),
                    host_id: host_id.into(),
                    url: input.text(64),
                    shape: shape(&mut input),
                    bitmap: input.bytes(64),
                    seed_request: input.byte().unwrap_or(0) % 2 == 1,
                    no_seed: input.byte().unwrap_or(0) % 2 == 1,
                };
                state.register_peer(&req, now).ok()
            }
            2 => state.get_parents(task_id, host_id, now).ok(),
            3 => {
                let count = usize::from(input.byte().unwrap_or(0) % 8);
                let digests = (0..count)
                    .map(|_| PieceDigest {
                        index: input.u32() % 64,
                        digest: input.digest(),
                    })
                    .collect();
                let pieces = (0..usize::from(input.byte().unwrap_or(0) % 8))
                    .map(|_| input.u32() % 128)
                    .collect();
                let req = ReportPiecesRequest {
                    task_id: task_id.into(),
                    host_id: host_id.into(),
                    shape: shape(&mut input),
                    pieces,
                    replace: input.byte().unwrap_or(0) % 2 == 1,
                    bitmap: input.bytes(64),
                    complete: input.byte().unwrap_or(0) % 2 == 1,
                    url: input.text(32),
                    digests,
                };
                let _ = state.report_pieces(&req, now);
                None
            }
            4 => {
                let req = ReportParentFailureRequest {
                    task_id: task_id.into(),
                    host_id: host_id.into(),
                    parent_host_id: input.pick(&HOSTS).into(),
                    reason: i32::from(input.byte().unwrap_or(0) % 8),
                    message: String::new(),
                    piece: input.u32() % 64,
                    claimed_digest: input.digest(),
                };
                state.report_parent_failure(&req, now).ok()
            }
            5 => {
                let req = GetPieceDigestsRequest {
                    task_id: task_id.into(),
                    host_id: host_id.into(),
                    first: input.u32(),
                    count: input.u32(),
                };
                if let Ok(resp) = state.get_piece_digests(&req, now) {
                    assert!(resp.digests.len() <= scheduler::digests::MAX_PER_CALL as usize);
                    for d in &resp.digests {
                        assert!(scheduler::digests::parse(&d.digest).is_some(), "{d:?}");
                    }
                }
                None
            }
            6 => {
                let req = ReportPeerResultRequest {
                    task_id: task_id.into(),
                    host_id: host_id.into(),
                    success: input.byte().unwrap_or(0) % 2 == 1,
                    error: String::new(),
                    was_source: input.byte().unwrap_or(0) % 2 == 1,
                    content_length: u64::from(input.u32()),
                };
                let _ = state.report_peer_result(&req, now);
                None
            }
            7 => {
                let _ = state.leave_task(task_id, host_id, now);
                None
            }
            8 => {
                let _ = state.leave_host(host_id, now);
                None
            }
            9 => {
                let object = proto::RegistryObject {
                    registry: input.text(16),
                    repository: input.text(16),
                    digest: input.digest(),
                };
                let req = proto::ReportAnonymousReadRequest {
                    object: Some(object.clone()),
                    host_id: host_id.into(),
                };
                if state.report_anonymous_read(&req, now).is_ok() {
                    let check = proto::CheckAnonymousReadRequest {
                        object: Some(object),
                    };
                    // Seen only once a seed or a second member reported it.
                    let _ = state
                        .check_anonymous_read(&check, now)
                        .expect("valid object");
                }
                None
            }
            10 => {
                let req = proto::ReportTagRequest {
                    tag: Some(proto::ImageTag {
                        registry: input.text(16),
                        repository: input.text(16),
                        tag: input.text(16),
                    }),
                    digest: input.digest(),
                    media_type: input.text(32),
                    host_id: host_id.into(),
                };
                let _ = state.report_tag(&req, now);
                None
            }
            _ => {
                now += Duration::from_millis(u64::from(input.byte().unwrap_or(0)) * 250);
                let _ = state.sweep(now);
                None
            }
        };
        if let Some(resp) = answer {
            assert!(resp.parents.len() <= MAX_PARENTS, "{resp:?}");
            for parent in &resp.parents {
                let id = parent.host.as_ref().map(|h| h.id.as_str()).unwrap_or("");
                assert_ne!(id, host_id, "offered to itself");
                assert!(!state.is_quarantined(id, now), "quarantined {id} offered");
            }
        }
    }
    let _ = state.stat("");
});
