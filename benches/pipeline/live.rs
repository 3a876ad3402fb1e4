//! Section 3: live-log latency. A step prints the wall clock (nanoseconds) on a line every 20 ms; two
//! followers note when each line reaches them: the gRPC log stream `zeroci logs --follow` reads, and
//! the job page's event stream (`GET /jobs/{id}/events`, Server-Sent Events). Same machine, same
//! clock.

use std::time::{Instant, SystemTime};

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::report::{Report, Samples, Target};
use crate::setup::{self, Controller, Machines};

/// Lines the step prints, 20 ms apart.
const LINES: usize = 250;

/// Splits output into lines and notes, for each, how long ago its stamp was printed.
#[derive(Default)]
struct Stamps {
    partial: Vec<u8>,
    latencies_ms: Vec<f64>,
}

impl Stamps {
    fn feed(&mut self, bytes: &[u8]) {
        let now = now_ns();
        self.partial.extend_from_slice(bytes);
        while let Some(end) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            if let Some(printed) = std::str::from_utf8(&line)
                .ok()
                .and_then(|l| l.trim().parse::<u128>().ok())
            {
                self.latencies_ms
                    .push(now.saturating_sub(printed) as f64 / 1e6);
            }
        }
    }
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

pub async fn live_log(report: &mut Report, machines: &Machines) {
    let controller = Controller::start(machines, 4);
    let yaml = format!("script:\n  - for i in $(seq 1 {LINES}); do date +%s%N; sleep 0.02; done\n");
    let repo = setup::repo(controller.scratch(), "ticking", &yaml);
    let mut client = controller.client().await;
    let id = setup::submit(&mut client, &repo).await;
    let page = tokio::spawn(page_stream(controller.http.clone(), id));
    let mut grpc = Stamps::default();
    let followed = setup::follow(&mut client, id, Instant::now(), |bytes| grpc.feed(bytes)).await;
    assert_eq!(followed.status, "success");
    let page = page.await.expect("the page's event stream");
    for (who, stamps, target) in [
        (
            "`zeroci logs --follow` (gRPC)",
            grpc,
            Some(Target::AtMost(50.0)),
        ),
        (
            "job page event stream (SSE)",
            page,
            Some(Target::AtMost(50.0)),
        ),
    ] {
        if stamps.latencies_ms.len() < LINES {
            report.add(
                "3 live log",
                format!("{who}: lines seen"),
                stamps.latencies_ms.len() as f64,
                "lines",
                Some(Target::AtLeast(LINES as f64)),
                "",
            );
            continue;
        }
        let samples = Samples::new(stamps.latencies_ms);
        report.add(
            "3 live log",
            format!("line printed → seen by {who}: p50"),
            samples.median(),
            "ms",
            None,
            format!("{} lines, 20 ms apart", samples.len()),
        );
        report.add(
            "3 live log",
            format!("line printed → seen by {who}: p99"),
            samples.percentile(99.0),
            "ms",
            target,
            "",
        );
    }
}

/// Reads `GET /jobs/{id}/events` to its end, feeding each `output` event's bytes to [`Stamps`].
async fn page_stream(http: String, id: u64) -> Stamps {
    let mut stamps = Stamps::default();
    let mut stream = tokio::net::TcpStream::connect(&http).await.unwrap();
    let request = format!(
        "GET /jobs/{id}/events HTTP/1.1\r\nHost: {http}\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let mut body = Dechunker::default();
    let mut text = Vec::new();
    let mut headers_done = false;
    let mut event = String::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = stream.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if !headers_done {
            let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&raw[..end]).to_string();
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            raw.drain(..end + 4);
            headers_done = true;
        }
        text.extend(body.feed(&mut raw));
        while let Some(end) = text.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = text.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line).trim_end().to_string();
            if let Some(name) = line.strip_prefix("event:") {
                event = name.trim().to_string();
            } else if let Some(data) = line.strip_prefix("data:")
                && event == "output"
            {
                let json: serde_json::Value = serde_json::from_str(data.trim()).unwrap();
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(json["b64"].as_str().unwrap_or_default())
                    .unwrap_or_default();
                stamps.feed(&bytes);
            }
        }
    }
    stamps
}

/// Undoes HTTP/1.1 chunked transfer encoding as bytes arrive.
#[derive(Default)]
struct Dechunker {
    /// Bytes left in the current chunk (and whether its trailing CRLF is still to skip).
    left: usize,
    in_chunk: bool,
}

impl Dechunker {
    /// Takes what it can from `raw` and returns the body bytes in it.
    fn feed(&mut self, raw: &mut Vec<u8>) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            if self.in_chunk {
                let take = self.left.min(raw.len());
                body.extend(raw.drain(..take));
                self.left -= take;
                if self.left > 0 {
                    return body;
                }
                if raw.len() < 2 {
                    return body;
                }
                raw.drain(..2);
                self.in_chunk = false;
            }
            let Some(end) = raw.windows(2).position(|w| w == b"\r\n") else {
                return body;
            };
            let size = String::from_utf8_lossy(&raw[..end]).to_string();
            let size =
                usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
            raw.drain(..end + 2);
            if size == 0 {
                return body;
            }
            self.left = size;
            self.in_chunk = true;
        }
    }
}
