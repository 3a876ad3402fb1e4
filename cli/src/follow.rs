//! Reading a job's log stream, and surviving a controller restart while following it.
//!
//! Every stored log event carries its cursor. After a broken stream we ask again for the events after
//! the last cursor handed on (and drop any event at or before it, should one come anyway): the user
//! sees every byte once, in order.

use std::time::{Duration, Instant};

use anyhow::anyhow;
use tokio_stream::{Stream, StreamExt};
use zeroci::pb::{self, log_event};

use zeroci::backoff::Backoff;

use crate::client::{Client, is_retryable};
use crate::display::EventSink;

/// Where log streams come from: the controller, or a script in tests.
pub trait LogSource {
    type Events: Stream<Item = Result<pb::LogEvent, tonic::Status>> + Unpin;

    fn open(
        &mut self,
        request: pb::StreamLogsRequest,
    ) -> impl Future<Output = Result<Self::Events, tonic::Status>>;

    /// The user-facing error for a failed call about `job`.
    fn error(&self, status: &tonic::Status, job: u64) -> anyhow::Error;
}

impl LogSource for Client {
    type Events = tonic::Streaming<pb::LogEvent>;

    async fn open(
        &mut self,
        request: pb::StreamLogsRequest,
    ) -> Result<Self::Events, tonic::Status> {
        Ok(self.rpc.stream_logs(request).await?.into_inner())
    }

    fn error(&self, status: &tonic::Status, job: u64) -> anyhow::Error {
        self.job_error(status, job)
    }
}

/// How hard to try to get a broken follow stream back: retries paced by [`zeroci::backoff::Backoff`]
/// from `first` up to `max`.
#[derive(Debug, Clone, Copy)]
pub struct Reconnect {
    pub first: Duration,
    pub max: Duration,
    /// Stop after failing continuously for this long (a controller restart takes seconds, not minutes).
    pub give_up_after: Duration,
}

impl Default for Reconnect {
    fn default() -> Reconnect {
        Reconnect {
            first: Duration::from_millis(250),
            max: Duration::from_secs(5),
            give_up_after: Duration::from_secs(300),
        }
    }
}

/// A stream that stayed up this long without delivering anything new still counts as having recovered.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);

/// What to read.
#[derive(Debug, Clone)]
pub struct LogRequest {
    pub job: u64,
    /// Keep reading until the job is over, reconnecting when the stream breaks.
    pub follow: bool,
    pub step: Option<u32>,
    pub reconnect: Reconnect,
}

/// Streams the log into `sink`. Returns the final job when the stream said the job is over (always, when
/// following), None when a non-following read reached the end of what is stored.
///
/// Only failures after the first stream was opened are retried: an error on the first call (unknown
/// job, refused certificate) is the answer.
pub async fn stream_logs<S: LogSource>(
    source: &mut S,
    request: &LogRequest,
    sink: &mut dyn EventSink,
) -> anyhow::Result<Option<pb::Job>> {
    let mut rpc_request = pb::StreamLogsRequest {
        id: request.job,
        follow: request.follow,
        step: request.step,
        after: None,
    };
    let reconnect = request.reconnect;
    let mut pacing = Backoff::new(reconnect.first, reconnect.max);
    // The cursor of the last event handed to the sink, over all streams.
    let mut delivered: Option<(u32, u64)> = None;
    let mut opened_once = false;
    // Since when the stream has been failing, and whether the user was told.
    let mut failing_since: Option<Instant> = None;
    loop {
        let failure = match source.open(rpc_request).await {
            Err(status) => {
                if !(opened_once && request.follow && is_retryable(&status)) {
                    return Err(source.error(&status, request.job));
                }
                source.error(&status, request.job).to_string()
            }
            Ok(mut events) => {
                if opened_once && failing_since.is_some() {
                    sink.notice("reconnected; resuming the log");
                }
                opened_once = true;
                let opened_at = Instant::now();
                let before = delivered;
                let failure = loop {
                    match events.next().await {
                        Some(Ok(event)) => {
                            if let Some(cursor) = &event.cursor {
                                let at = (cursor.attempt, cursor.seq);
                                if delivered.is_some_and(|d| at <= d) {
                                    continue; // handed on already
                                }
                                delivered = Some(at);
                            }
                            match event.kind {
                                Some(log_event::Kind::JobDone(job)) => return Ok(Some(job)),
                                Some(kind) => sink.event(&kind)?,
                                None => {}
                            }
                        }
                        Some(Err(status)) => {
                            if !(request.follow && is_retryable(&status)) {
                                return Err(source.error(&status, request.job));
                            }
                            break source.error(&status, request.job).to_string();
                        }
                        None if request.follow => {
                            break "the log stream ended before the job did".to_string();
                        }
                        None => return Ok(None),
                    }
                };
                if delivered > before || opened_at.elapsed() >= HEALTHY_AFTER {
                    // This stream worked for a while: a new failure, a fresh budget.
                    failing_since = None;
                    pacing.reset();
                }
                failure
            }
        };
        let since = match failing_since {
            Some(since) => since,
            None => {
                sink.notice(&format!("lost the log stream ({failure}); reconnecting…"));
                Instant::now()
            }
        };
        if since.elapsed() >= reconnect.give_up_after {
            return Err(anyhow!(
                "could not get the log of job {} back for {}s: {failure}",
                request.job,
                reconnect.give_up_after.as_secs()
            ));
        }
        failing_since = Some(since);
        rpc_request.after = delivered.map(|(attempt, seq)| pb::LogCursor { attempt, seq });
        pacing.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    type Script = VecDeque<Result<Vec<Result<pb::LogEvent, tonic::Status>>, tonic::Status>>;

    /// Answers each `open` with the next scripted stream (or error).
    struct Scripted {
        script: Script,
        opens: usize,
        /// The `after` of every request, in order.
        afters: Vec<Option<(u32, u64)>>,
    }

    impl LogSource for Scripted {
        type Events = tokio_stream::Iter<std::vec::IntoIter<Result<pb::LogEvent, tonic::Status>>>;

        async fn open(
            &mut self,
            request: pb::StreamLogsRequest,
        ) -> Result<Self::Events, tonic::Status> {
            self.opens += 1;
            self.afters.push(request.after.map(|c| (c.attempt, c.seq)));
            match self.script.pop_front() {
                Some(Ok(events)) => Ok(tokio_stream::iter(events)),
                Some(Err(status)) => Err(status),
                None => Err(tonic::Status::unavailable("script exhausted")),
            }
        }

        fn error(&self, status: &tonic::Status, job: u64) -> anyhow::Error {
            anyhow!("job {job}: {}", status.message())
        }
    }

    #[derive(Default)]
    struct Collect {
        output: Vec<u8>,
        events: Vec<String>,
        notices: Vec<String>,
    }

    impl EventSink for Collect {
        fn event(&mut self, kind: &log_event::Kind) -> anyhow::Result<()> {
            match kind {
                log_event::Kind::Output(o) => self.output.extend_from_slice(&o.data),
                log_event::Kind::StepStarted(s) => self.events.push(format!("start {}", s.name)),
                log_event::Kind::StepFinished(s) => self.events.push(format!("end {}", s.name)),
                log_event::Kind::JobDone(_) => self.events.push("done".into()),
            }
            Ok(())
        }
        fn notice(&mut self, message: &str) {
            self.notices.push(message.to_string());
        }
    }

    fn at(seq: u64) -> Option<pb::LogCursor> {
        Some(pb::LogCursor { attempt: 1, seq })
    }

    fn out(seq: u64, s: &str) -> Result<pb::LogEvent, tonic::Status> {
        Ok(pb::LogEvent {
            cursor: at(seq),
            kind: Some(log_event::Kind::Output(pb::LogOutput {
                step: 0,
                stream: 1,
                data: s.as_bytes().to_vec().into(),
            })),
        })
    }

    fn start(seq: u64, name: &str) -> Result<pb::LogEvent, tonic::Status> {
        let step = pb::StepInfo {
            name: name.into(),
            ..Default::default()
        };
        Ok(pb::LogEvent {
            cursor: at(seq),
            kind: Some(log_event::Kind::StepStarted(step)),
        })
    }

    fn done() -> Result<pb::LogEvent, tonic::Status> {
        let job = pb::Job {
            id: 1,
            status: pb::JobStatus::Success as i32,
            ..Default::default()
        };
        Ok(pb::LogEvent {
            cursor: None,
            kind: Some(log_event::Kind::JobDone(job)),
        })
    }

    fn request(follow: bool) -> LogRequest {
        LogRequest {
            job: 1,
            follow,
            step: None,
            reconnect: Reconnect {
                first: Duration::from_millis(1),
                max: Duration::from_millis(2),
                give_up_after: Duration::from_millis(200),
            },
        }
    }

    #[tokio::test]
    async fn resumes_without_duplicates_after_a_broken_stream() {
        let broken = || Err(tonic::Status::unavailable("connection reset"));
        let mut source = Scripted {
            script: VecDeque::from([
                Ok(vec![start(1, "a"), out(2, "one "), broken()]),
                // Controller restarting.
                Err(tonic::Status::unavailable("refused")),
                // Resumes after the cursor asked for, then the stream just ends.
                Ok(vec![out(3, "two ")]),
                // A controller that replays some events anyway: they are dropped.
                Ok(vec![
                    out(2, "one "),
                    out(3, "two "),
                    out(4, "three"),
                    done(),
                ]),
            ]),
            opens: 0,
            afters: Vec::new(),
        };
        let mut sink = Collect::default();
        let job = stream_logs(&mut source, &request(true), &mut sink)
            .await
            .unwrap();
        assert_eq!(job.unwrap().status(), pb::JobStatus::Success);
        assert_eq!(String::from_utf8(sink.output).unwrap(), "one two three");
        assert_eq!(sink.events, vec!["start a"]);
        assert_eq!(source.opens, 4);
        assert_eq!(
            source.afters,
            vec![None, Some((1, 2)), Some((1, 2)), Some((1, 3))]
        );
        assert!(
            sink.notices.iter().any(|n| n.contains("reconnecting")),
            "{:?}",
            sink.notices
        );
        assert!(
            sink.notices.iter().any(|n| n.contains("reconnected")),
            "{:?}",
            sink.notices
        );
    }

    #[tokio::test]
    async fn first_failure_is_the_answer() {
        let mut source = Scripted {
            script: VecDeque::from([Err(tonic::Status::not_found("no job"))]),
            opens: 0,
            afters: Vec::new(),
        };
        let err = stream_logs(&mut source, &request(true), &mut Collect::default())
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "job 1: no job");
        assert_eq!(source.opens, 1);
    }

    #[tokio::test]
    async fn without_follow_the_end_of_the_stream_is_the_end() {
        let mut source = Scripted {
            script: VecDeque::from([Ok(vec![start(1, "a"), out(2, "x")])]),
            opens: 0,
            afters: Vec::new(),
        };
        let mut sink = Collect::default();
        assert!(
            stream_logs(&mut source, &request(false), &mut sink)
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(sink.output, b"x");
        // A broken stream is not retried either.
        let mut source = Scripted {
            script: VecDeque::from([Ok(vec![
                out(1, "x"),
                Err(tonic::Status::unavailable("gone")),
            ])]),
            opens: 0,
            afters: Vec::new(),
        };
        assert!(
            stream_logs(&mut source, &request(false), &mut Collect::default())
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn gives_up_eventually() {
        let mut source = Scripted {
            script: VecDeque::from([Ok(vec![out(1, "x")])]),
            opens: 0,
            afters: Vec::new(),
        };
        let err = stream_logs(&mut source, &request(true), &mut Collect::default())
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("could not get the log of job 1 back"),
            "{err}"
        );
        assert!(source.opens > 2);
    }
}
