//! Writes the seed inputs of the `agent_messages` fuzz target (length-prefixed `AgentMessage`s) into
//! `corpus/agent_messages/`: `cargo run -p zeroci-fuzz --example agent_seeds`.

use prost::Message;
use zeroci::pb;
use zeroci::pb::agent_event::Kind;

fn event(seq: u64, kind: Kind) -> pb::AgentMessage {
    pb::AgentMessage {
        kind: Some(pb::agent_message::Kind::Event(pb::AgentEvent {
            seq,
            at_unix_ms: 1_700_000_000_000 + seq as i64,
            kind: Some(kind),
        })),
    }
}

fn heartbeat() -> pb::AgentMessage {
    pb::AgentMessage {
        kind: Some(pb::agent_message::Kind::Heartbeat(pb::Heartbeat::default())),
    }
}

fn output(step: u32, text: &str) -> Kind {
    Kind::Output(pb::Output {
        step,
        stream: pb::OutputStream::Stdout as i32,
        data: text.as_bytes().to_vec().into(),
    })
}

fn exited(step: u32, exit_code: i32) -> Kind {
    Kind::StepExited(pb::StepExited {
        step,
        exit_code,
        ..Default::default()
    })
}

fn checked_out(file: &str) -> Kind {
    Kind::CheckedOut(pb::CheckedOut {
        commit: "0123456789abcdef0123456789abcdef01234567".into(),
        has_pipeline_file: true,
        pipeline_file: file.as_bytes().to_vec().into(),
        pipeline_file_too_large: false,
    })
}

fn encode(messages: &[pb::AgentMessage]) -> Vec<u8> {
    let mut out = Vec::new();
    for message in messages {
        let bytes = message.encode_to_vec();
        out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        out.extend_from_slice(&bytes);
    }
    out
}

fn run(kinds: Vec<Kind>, heartbeat_every: usize) -> Vec<pb::AgentMessage> {
    let mut messages = Vec::new();
    for (i, kind) in kinds.into_iter().enumerate() {
        messages.push(event(i as u64 + 1, kind));
        if (i + 1) % heartbeat_every == 0 {
            messages.push(heartbeat());
        }
    }
    messages
}

fn main() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/agent_messages");
    std::fs::create_dir_all(&dir).unwrap();
    let started = |step| Kind::StepStarted(pb::StepStarted { step });
    let finished = || Kind::Finished(pb::Finished {});
    let whole = vec![
        started(0),
        exited(0, 0),
        checked_out("install:\n  - echo i\nscript:\n  - echo a\n  - echo b\n"),
        started(1),
        output(1, "installing\n"),
        exited(1, 0),
        started(2),
        output(2, "a\n"),
        exited(2, 1),
        started(3),
        output(3, "b\n"),
        exited(3, 0),
        finished(),
    ];
    let seeds: Vec<(&str, Vec<pb::AgentMessage>)> = vec![
        ("whole_run", run(whole.clone(), 3)),
        ("whole_run_one_batch", run(whole, 100)),
        (
            "pipeline_stages",
            run(
                vec![
                    started(0),
                    exited(0, 0),
                    checked_out(
                        "jobs:\n  - name: a\n    script: [x]\n  - name: b\n    script: [y]\n",
                    ),
                    started(1),
                    output(1, "x"),
                    exited(1, 0),
                    Kind::Artifact(pb::ArtifactChunk {
                        name: "bin".into(),
                        offset: 0,
                        data: b"\x7fELF".to_vec().into(),
                        last: true,
                        error: String::new(),
                    }),
                    finished(),
                ],
                2,
            ),
        ),
        (
            "invalid_pipeline",
            run(
                vec![
                    started(0),
                    exited(0, 0),
                    checked_out("script: 3\n"),
                    finished(),
                ],
                1,
            ),
        ),
        (
            "test_report",
            run(
                vec![
                    started(0),
                    exited(0, 0),
                    checked_out("script:\n  - pytest\n"),
                    started(1),
                    Kind::TestReport(pb::TestReport {
                        step: 1,
                        xml: b"<testsuite tests=\"1\"><testcase name=\"t\"/></testsuite>"
                            .to_vec()
                            .into(),
                        ..Default::default()
                    }),
                    exited(1, 0),
                    finished(),
                ],
                4,
            ),
        ),
        (
            "output_past_the_limit",
            run(
                vec![
                    started(0),
                    exited(0, 0),
                    checked_out("script:\n  - yes\n"),
                    started(1),
                    output(1, &"y\n".repeat(1500)),
                    output(1, &"y\n".repeat(1500)),
                    output(1, "after the limit\n"),
                    exited(1, 141),
                    finished(),
                ],
                2,
            ),
        ),
    ];
    for (name, messages) in seeds {
        std::fs::write(dir.join(name), encode(&messages)).unwrap();
    }
}
