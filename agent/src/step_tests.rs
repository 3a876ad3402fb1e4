//! Tests of the step runner against real processes, with an outbox whose events are acknowledged as
//! soon as they are produced (a perfect controller).

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use zeroci::pb::AgentEvent;

use super::*;

struct Harness {
    ctx: StepContext,
    events: Arc<Mutex<Vec<AgentEvent>>>,
    seen: watch::Receiver<usize>,
    _acker: tokio::task::JoinHandle<()>,
    dir: tempfile::TempDir,
}

impl Harness {
    fn new() -> Harness {
        Harness::with_cap(crate::outbox::DEFAULT_CAP_BYTES)
    }

    fn with_cap(cap_bytes: usize) -> Harness {
        let outbox = Arc::new(Outbox::new(cap_bytes));
        let events = Arc::new(Mutex::new(Vec::new()));
        let (seen_tx, seen) = watch::channel(0);
        let acker = tokio::spawn({
            let outbox = outbox.clone();
            let events = events.clone();
            async move {
                loop {
                    let event = outbox.next_unsent().await;
                    let seq = event.seq;
                    // Record before acknowledging: the step's flush barrier then implies it is recorded.
                    let n = {
                        let mut events = events.lock().unwrap();
                        events.push(event);
                        events.len()
                    };
                    outbox.ack(seq);
                    let _ = seen_tx.send(n);
                }
            }
        });
        let ctx = StepContext {
            outbox,
            cancel: JobCancel::new(CancellationToken::new()),
            groups: ProcessGroups::default(),
            secrets: Secrets::default(),
            options: RunOptions {
                kill_grace: Duration::from_secs(2),
                drain_limit: Duration::from_millis(300),
                shared_test_xml: None,
                isolate_network: false,
                unisolated: false,
                clean_environment: false,
            },
        };
        Harness {
            ctx,
            events,
            seen,
            _acker: acker,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    async fn run(
        &self,
        kind: StepKind,
        script: &str,
        timeout_secs: u64,
        idle: Option<Duration>,
    ) -> Outcome {
        let step = pb::Step {
            index: 3,
            name: "test".into(),
            kind: kind as i32,
            script: script.into(),
            shell: String::new(),
            timeout_secs,
            notes: Vec::new(),
        };
        let env = vec![("ZEROCI_STEP".to_string(), "test".to_string())];
        run_step(&step, self.dir.path(), &env, idle, None, &self.ctx).await
    }

    fn output(&self, stream: OutputStream) -> Vec<u8> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match &e.kind {
                Some(Kind::Output(o)) if o.stream == stream as i32 => Some(o.data.to_vec()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// Waits until some output event satisfies `f`.
    async fn wait_for_output(&mut self, f: impl Fn(&[u8]) -> bool) {
        let events = self.events.clone();
        let found = move || {
            events
                .lock()
                .unwrap()
                .iter()
                .any(|e| matches!(&e.kind, Some(Kind::Output(o)) if f(&o.data)))
        };
        let wait = self.seen.wait_for(|_| found());
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .expect("output")
            .unwrap();
    }

    fn kinds(&self) -> Vec<&'static str> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .map(|e| match e.kind {
                Some(Kind::Output(_)) => "output",
                Some(Kind::StepStarted(_)) => "started",
                Some(Kind::StepExited(_)) => "exited",
                Some(Kind::TestReport(_)) => "test_report",
                _ => "other",
            })
            .collect()
    }

    /// Waits for the `StepExited` event (pushed after `run_step`'s flush) and returns it.
    async fn exited(&mut self) -> pb::StepExited {
        let events = self.events.clone();
        let get = move || {
            events.lock().unwrap().iter().find_map(|e| match &e.kind {
                Some(Kind::StepExited(x)) => Some(x.clone()),
                _ => None,
            })
        };
        let wait = self.seen.wait_for(|_| get().is_some());
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .expect("StepExited")
            .unwrap();
        get().unwrap()
    }
}

#[tokio::test]
async fn output_bytes_arrive_exactly_as_written() {
    let mut h = Harness::new();
    let outcome = h
        .run(
            StepKind::Script,
            r"printf 'line\nno newline'; printf '\000\377\001' >&2",
            0,
            None,
        )
        .await;
    assert_eq!(outcome.exit_code, 0);
    assert!(outcome.succeeded());
    h.exited().await;
    assert_eq!(h.output(OutputStream::Stdout), b"line\nno newline");
    assert_eq!(h.output(OutputStream::Stderr), [0u8, 0xff, 1]);
    let kinds = h.kinds();
    assert_eq!(kinds.first(), Some(&"started"));
    assert_eq!(kinds.last(), Some(&"exited"));
    // Sequence numbers have no gaps.
    let seqs: Vec<u64> = h.events.lock().unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
}

#[tokio::test]
async fn large_binary_output_is_chunked_without_loss() {
    let mut h = Harness::new();
    let outcome = h
        .run(
            StepKind::Script,
            "head -c 300000 /dev/urandom > blob; cat blob",
            0,
            None,
        )
        .await;
    assert_eq!(outcome.exit_code, 0);
    h.exited().await;
    let expected = std::fs::read(h.dir.path().join("blob")).unwrap();
    assert_eq!(h.output(OutputStream::Stdout), expected);
    let largest = h
        .events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::Output(o)) => Some(o.data.len()),
            _ => None,
        })
        .max()
        .unwrap();
    assert!(largest <= READ_CHUNK);
}

#[tokio::test]
async fn exit_codes_signals_env_and_install_mode() {
    let h = Harness::new();
    assert_eq!(
        h.run(StepKind::Script, "exit 7", 0, None).await.exit_code,
        7
    );
    assert_eq!(
        h.run(StepKind::Script, "kill -9 $$", 0, None)
            .await
            .exit_code,
        128 + 9
    );
    // A script step keeps going after a failing command; an install step (`sh -e`) does not.
    let script = "false; printf after";
    assert_eq!(h.run(StepKind::Script, script, 0, None).await.exit_code, 0);
    assert_eq!(h.run(StepKind::Install, script, 0, None).await.exit_code, 1);
    assert_eq!(h.output(OutputStream::Stdout), b"after");
    h.run(
        StepKind::Script,
        r#"printf '%s' "$ZEROCI_STEP" >&2"#,
        0,
        None,
    )
    .await;
    assert_eq!(h.output(OutputStream::Stderr), b"test");
}

#[tokio::test]
async fn notes_come_before_the_commands_output() {
    let h = Harness::new();
    let step = pb::Step {
        index: 1,
        script: "echo out >&2".into(),
        notes: vec!["this machine's limits: 64 processes".into()],
        ..Default::default()
    };
    run_step(&step, h.dir.path(), &[], None, None, &h.ctx).await;
    assert_eq!(
        h.output(OutputStream::Stderr),
        b"zeroci: this machine's limits: 64 processes\nout\n"
    );
}

#[tokio::test]
async fn an_exit_message_never_carries_a_secret() {
    let mut h = Harness::new();
    h.ctx.secrets = Secrets::new(["s3cr3t"]);
    let step = pb::Step {
        index: 1,
        script: "true".into(),
        shell: "/nonexistent/s3cr3t/sh".into(),
        ..Default::default()
    };
    let outcome = run_step(&step, h.dir.path(), &[], None, None, &h.ctx).await;
    assert!(
        outcome.message.contains("s3cr3t"),
        "the raw message names it"
    );
    assert_eq!(
        h.exited()
            .await
            .message
            .matches("/nonexistent/***/sh")
            .count(),
        1
    );
}

#[tokio::test]
async fn missing_shell_is_reported_as_not_started() {
    let mut h = Harness::new();
    let step = pb::Step {
        index: 1,
        script: "true".into(),
        shell: "/nonexistent/shell".into(),
        ..Default::default()
    };
    let outcome = run_step(&step, h.dir.path(), &[], None, None, &h.ctx).await;
    assert_eq!(outcome.exit_code, -1);
    assert!(
        outcome.message.contains("/nonexistent/shell"),
        "{}",
        outcome.message
    );
    let exited = h.exited().await;
    assert_eq!(exited.exit_code, -1);
    assert!(!outcome.succeeded());
}

#[tokio::test]
async fn wall_clock_timeout_exits_124() {
    let mut h = Harness::new();
    let started = std::time::Instant::now();
    let outcome = h
        .run(StepKind::Script, "echo begin; sleep 30", 1, None)
        .await;
    assert_eq!(outcome.exit_code, TIMEOUT_EXIT_CODE);
    assert!(outcome.timed_out);
    assert_eq!(outcome.message, "timed out after 1s");
    assert!(started.elapsed() < Duration::from_secs(10));
    let exited = h.exited().await;
    assert!(exited.timed_out);
    assert_eq!(h.output(OutputStream::Stdout), b"begin\n");
}

#[tokio::test]
async fn idle_timeout_exits_124() {
    let h = Harness::new();
    let started = std::time::Instant::now();
    // Output keeps it alive for a while, then silence.
    let script = "for i in 1 2 3; do echo $i; sleep 0.2; done; sleep 30";
    let outcome = h
        .run(
            StepKind::Script,
            script,
            0,
            Some(Duration::from_millis(700)),
        )
        .await;
    assert_eq!(outcome.exit_code, TIMEOUT_EXIT_CODE);
    assert!(outcome.timed_out);
    assert!(outcome.message.contains("idle"), "{}", outcome.message);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(h.output(OutputStream::Stdout), b"1\n2\n3\n");
}

#[tokio::test]
async fn cancel_kills_the_whole_process_group_quickly() {
    let mut h = Harness::new();
    let cancel = h.ctx.cancel.clone();
    let groups = h.ctx.groups.clone();
    let run = {
        let ctx = h.ctx.clone();
        let cwd = h.dir.path().to_path_buf();
        tokio::spawn(async move {
            let step = pb::Step {
                index: 2,
                script: "sleep 100 & echo started; sleep 100; wait".into(),
                ..Default::default()
            };
            run_step(&step, &cwd, &[], None, None, &ctx).await
        })
    };
    h.wait_for_output(|d| d == b"started\n").await;
    let pgid = *groups.list().first().expect("group recorded");
    assert!(group_running(pgid));
    let started = std::time::Instant::now();
    cancel.cancel("cancelled by test", Duration::from_secs(5));
    let outcome = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert!(outcome.cancelled);
    assert_eq!(outcome.exit_code, 128 + SIGTERM);
    assert_eq!(outcome.message, "cancelled by test");
    assert!(!group_running(pgid), "background sleep survived");
    assert!(h.exited().await.cancelled);
}

#[tokio::test]
async fn term_ignoring_group_is_killed_after_grace() {
    let h = Harness::new();
    let cancel = h.ctx.cancel.clone();
    let groups = h.ctx.groups.clone();
    let mut seen = h.seen.clone();
    let events = h.events.clone();
    let task = {
        let ctx = h.ctx.clone();
        let cwd = h.dir.path().to_path_buf();
        tokio::spawn(async move {
            let step = pb::Step {
                index: 1,
                script: "trap '' TERM; echo ready; while :; do sleep 1; done".into(),
                ..Default::default()
            };
            run_step(&step, &cwd, &[], None, None, &ctx).await
        })
    };
    let ready = || {
        events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e.kind, Some(Kind::Output(_))))
    };
    tokio::time::timeout(Duration::from_secs(10), seen.wait_for(|_| ready()))
        .await
        .unwrap()
        .unwrap();
    let pgid = groups.list()[0];
    cancel.cancel("stop", Duration::from_millis(300));
    let outcome = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
    assert!(outcome.cancelled);
    assert_eq!(outcome.exit_code, 128 + SIGKILL);
    // SIGKILL is sent to the whole group; a member may take a moment to be gone after its shell.
    zeroci_testkit::eventually("the group to be gone", || async {
        (!group_running(pgid)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn background_process_holding_the_pipe_does_not_hang_the_step() {
    let h = Harness::new();
    let started = std::time::Instant::now();
    let outcome = h
        .run(StepKind::Script, "sleep 30 & echo done", 0, None)
        .await;
    assert_eq!(outcome.exit_code, 0);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(h.output(OutputStream::Stdout), b"done\n");
    // The background sleep is still there; the agent kills leftovers when the job ends.
    h.ctx.groups.kill_all();
}

#[tokio::test]
async fn secrets_are_masked() {
    let mut h = Harness::new();
    h.ctx.secrets = Secrets::new(["s3cr3t"]);
    h.run(StepKind::Script, "printf 'token=s3cr3t!'", 0, None)
        .await;
    assert_eq!(h.output(OutputStream::Stdout), b"token=***!");
}

#[tokio::test]
async fn background_process_writing_nonstop_does_not_hang_the_step() {
    let h = Harness::new();
    let started = std::time::Instant::now();
    let outcome = h
        .run(
            StepKind::Script,
            "while :; do echo spam; done & echo done",
            0,
            None,
        )
        .await;
    assert_eq!(outcome.exit_code, 0);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    h.ctx.groups.kill_all();
}

#[tokio::test]
async fn backpressure_loses_no_bytes() {
    // A tiny cap: almost every read waits for the previous events to be acknowledged.
    let h = Harness::with_cap(1024);
    let outcome = h
        .run(
            StepKind::Script,
            "head -c 500000 /dev/urandom > blob; cat blob",
            0,
            None,
        )
        .await;
    assert_eq!(outcome.exit_code, 0);
    let expected = std::fs::read(h.dir.path().join("blob")).unwrap();
    assert_eq!(h.output(OutputStream::Stdout), expected);
}

#[tokio::test]
async fn a_script_steps_report_is_sent_before_its_exit_and_a_shared_report_is_consumed() {
    let mut h = Harness::new();
    let shared = h.dir.path().join("shared-test.xml");
    h.ctx.options.shared_test_xml = Some(shared.clone());
    let own = h.dir.path().join("own.xml");
    std::fs::write(&own, "<testsuite/>").unwrap();
    let step = pb::Step {
        index: 4,
        name: "t".into(),
        kind: StepKind::Script as i32,
        script: format!("printf '<testsuites/>' > {}", shared.display()),
        ..Default::default()
    };
    // The step's own report wins; the shared one stays for a step that writes none.
    run_step(&step, h.dir.path(), &[], None, Some(&own), &h.ctx).await;
    h.exited().await;
    let kinds = h.kinds();
    let report = kinds
        .iter()
        .position(|k| *k == "test_report")
        .expect("report sent");
    assert!(report < kinds.iter().position(|k| *k == "exited").unwrap());
    assert!(shared.exists());
    let missing = h.dir.path().join("missing.xml");
    run_step(&step, h.dir.path(), &[], None, Some(&missing), &h.ctx).await;
    assert!(!shared.exists(), "the shared report is consumed");
    let count_reports = |h: &Harness| h.kinds().iter().filter(|k| **k == "test_report").count();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while count_reports(&h) < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "second report not seen"
        );
        h.seen.changed().await.unwrap();
    }
    let reports: Vec<_> = h
        .events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match &e.kind {
            Some(Kind::TestReport(r)) => Some(r.xml.to_vec()),
            _ => None,
        })
        .collect();
    assert_eq!(
        reports,
        vec![b"<testsuite/>".to_vec(), b"<testsuites/>".to_vec()]
    );
}
