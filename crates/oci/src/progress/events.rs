//! The `progress-v0` events of upstream bootc's `--progress-fd` protocol
//! (`/work/shared/reference/progress-v0.schema.json`) and the writer of
//! their JSON Lines stream.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// The version of the progress protocol announced in the `Start` event
/// (the value upstream bootc sends).
pub const PROGRESS_API_VERSION: &str = "0.1.0";

/// Minimum time between two droppable (`Progress`) events.
pub const REFRESH_INTERVAL: Duration = Duration::from_millis(200);

/// One line of the `--progress-fd` stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "PascalCase",
    rename_all_fields = "camelCase"
)]
pub enum Event {
    /// The first event of a stream.
    Start {
        /// The protocol version, [`PROGRESS_API_VERSION`].
        version: String,
    },
    /// Byte-level progress of a task made of steps, e.g. pulling layers.
    ProgressBytes {
        /// Machine-readable task type, e.g. `pulling`.
        task: String,
        /// Human-readable description of the task.
        description: String,
        /// Unique identifier of the task, e.g. the image reference.
        id: String,
        /// Bytes fetched by a previous run.
        bytes_cached: u64,
        /// Bytes fetched so far.
        bytes: u64,
        /// Bytes in total; 0 means unspecified.
        bytes_total: u64,
        /// Steps done by a previous run.
        steps_cached: u64,
        /// Steps done so far.
        steps: u64,
        /// Steps in total, e.g. layers.
        steps_total: u64,
        /// Per-step byte progress.
        subtasks: Vec<SubTaskBytes>,
    },
    /// Progress of a task made of discrete steps.
    ProgressSteps {
        /// Machine-readable task type.
        task: String,
        /// Human-readable description of the task.
        description: String,
        /// Unique identifier of the task.
        id: String,
        /// Steps done by a previous run.
        steps_cached: u64,
        /// Steps done so far.
        steps: u64,
        /// Steps in total.
        steps_total: u64,
        /// The steps and whether each is complete.
        subtasks: Vec<SubTaskStep>,
    },
}

/// Byte progress of one step, e.g. one layer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubTaskBytes {
    /// Machine-readable type, e.g. `layer`.
    pub subtask: String,
    /// Human-readable description.
    pub description: String,
    /// Identifier, e.g. the layer digest.
    pub id: String,
    /// Bytes fetched by a previous run.
    pub bytes_cached: u64,
    /// Bytes fetched so far.
    pub bytes: u64,
    /// Bytes in total; `bytes == bytes_total` marks the step complete.
    pub bytes_total: u64,
}

/// One discrete step and whether it is complete.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubTaskStep {
    /// Machine-readable type.
    pub subtask: String,
    /// Human-readable description.
    pub description: String,
    /// Identifier.
    pub id: String,
    /// False while running, true once done.
    pub completed: bool,
}

/// Writes [`Event`]s as JSON Lines, starting with a `Start` event.
///
/// Every event is one `write` of one line, flushed at once. Writes are
/// synchronous: a reader that stops reading a full pipe stalls the caller.
/// If a write fails (e.g. the reader closed the pipe) a warning is logged
/// and the writer stops writing; the operation being reported on carries on.
pub struct JsonLinesWriter {
    state: Mutex<WriterState>,
}

struct WriterState {
    out: Option<Box<dyn Write + Send>>,
    sent_start: bool,
    last_write: Option<Instant>,
}

impl std::fmt::Debug for JsonLinesWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonLinesWriter")
            .field("active", &self.is_active())
            .finish_non_exhaustive()
    }
}

impl JsonLinesWriter {
    /// Writes to `file`.
    pub fn new(file: File) -> Self {
        Self::from_writer(file)
    }

    /// Writes to any writer (tests, in-memory buffers).
    pub fn from_writer(out: impl Write + Send + 'static) -> Self {
        JsonLinesWriter {
            state: Mutex::new(WriterState {
                out: Some(Box::new(out)),
                sent_start: false,
                last_write: None,
            }),
        }
    }

    /// Writes to the inherited file descriptor `fd`, as `--progress-fd N`.
    ///
    /// Turning a raw descriptor into a `File` needs `unsafe`, which this
    /// workspace denies; instead `/proc/self/fd/N` is opened for appending.
    /// That gives a new open file description of the same pipe or file
    /// (`O_APPEND` so a regular file is not overwritten from offset 0); it
    /// fails for sockets, which cannot be reopened through `/proc`. The
    /// original descriptor stays open.
    pub fn open_fd(fd: i32) -> Result<Self> {
        anyhow::ensure!(fd >= 0, "invalid progress file descriptor {fd}");
        let path = PathBuf::from(format!("/proc/self/fd/{fd}"));
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| {
                format!(
                    "Opening progress file descriptor {fd} via {}",
                    path.display()
                )
            })?;
        Ok(Self::new(file))
    }

    /// Whether events are still being written (no write has failed).
    pub fn is_active(&self) -> bool {
        self.lock().out.is_some()
    }

    /// Writes `event`.
    pub fn send(&self, event: &Event) {
        self.send_impl(event, true);
    }

    /// Writes `event` unless another event was written less than
    /// [`REFRESH_INTERVAL`] ago.
    pub fn send_lossy(&self, event: &Event) {
        self.send_impl(event, false);
    }

    fn lock(&self) -> MutexGuard<'_, WriterState> {
        // A panic while holding the lock leaves only counters behind; keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn send_impl(&self, event: &Event, required: bool) {
        let mut state = self.lock();
        let now = Instant::now();
        if !required
            && state
                .last_write
                .is_some_and(|t| now.duration_since(t) < REFRESH_INTERVAL)
        {
            return;
        }
        let state = &mut *state;
        let Some(out) = state.out.as_mut() else {
            return;
        };
        let mut result = Ok(());
        if !state.sent_start {
            let start = Event::Start {
                version: PROGRESS_API_VERSION.to_owned(),
            };
            result = write_line(out, &start);
        }
        if result.is_ok() {
            result = write_line(out, event);
        }
        match result {
            Ok(()) => {
                state.sent_start = true;
                state.last_write = Some(now);
            }
            Err(e) => {
                tracing::warn!("Writing progress events failed, no longer reporting: {e:#}");
                state.out = None;
            }
        }
    }
}

/// Serializes `event` as one line and writes it in one call.
fn write_line(out: &mut (dyn Write + Send), event: &Event) -> Result<()> {
    let mut line = serde_json::to_vec(event).context("Serializing progress event")?;
    line.push(b'\n');
    out.write_all(&line).context("Writing progress event")?;
    out.flush().context("Flushing progress events")?;
    Ok(())
}

#[cfg(test)]
pub(super) mod test_support {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    pub(crate) const SCHEMA: &str = include_str!("../fixtures/progress-v0.schema.json");

    /// An in-memory sink shared with the test.
    #[derive(Clone, Default)]
    pub(crate) struct Sink(pub(crate) Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Sink {
        pub(crate) fn lines(&self) -> Vec<serde_json::Value> {
            let buf = self.0.lock().unwrap();
            let text = std::str::from_utf8(&buf).unwrap();
            assert!(text.is_empty() || text.ends_with('\n'));
            text.lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        }
    }

    pub(crate) fn validate_all(lines: &[serde_json::Value]) {
        let schema: serde_json::Value = serde_json::from_str(SCHEMA).unwrap();
        let validator = jsonschema::validator_for(&schema).unwrap();
        for line in lines {
            let errors: Vec<String> = validator.iter_errors(line).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{line}: {errors:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::test_support::{SCHEMA, Sink, validate_all};
    use super::*;

    #[test]
    fn writer_rate_limits_lossy_events_and_stops_on_error() {
        let sink = Sink::default();
        let w = JsonLinesWriter::from_writer(sink.clone());
        let ev = Event::ProgressSteps {
            task: "importing".into(),
            description: "Importing".into(),
            id: "x".into(),
            steps_cached: 0,
            steps: 0,
            steps_total: 1,
            subtasks: vec![SubTaskStep {
                subtask: "importing".into(),
                description: "Importing".into(),
                id: "importing".into(),
                completed: false,
            }],
        };
        w.send(&ev);
        w.send_lossy(&ev); // within the refresh interval: dropped
        w.send(&ev);
        let lines = sink.lines();
        validate_all(&lines);
        assert_eq!(lines.len(), 3);
        assert_eq!(
            serde_json::from_value::<Event>(lines[2].clone()).unwrap(),
            ev
        );

        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let w = JsonLinesWriter::from_writer(Broken);
        assert!(w.is_active());
        w.send(&ev);
        assert!(!w.is_active());
        w.send(&ev);
    }

    #[test]
    fn open_fd_writes_through_proc() {
        use std::io::Read;
        use std::os::fd::AsRawFd;

        let (mut reader, writer) = std::io::pipe().unwrap();
        let w = JsonLinesWriter::open_fd(writer.as_raw_fd()).unwrap();
        w.send(&Event::Start {
            version: "x".into(),
        });
        drop(w);
        drop(writer);
        let mut text = String::new();
        reader.read_to_string(&mut text).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0], r#"{"type":"Start","version":"0.1.0"}"#);

        let err = JsonLinesWriter::open_fd(-1).unwrap_err();
        assert!(
            err.to_string()
                .contains("invalid progress file descriptor -1")
        );
        let err = format!("{:#}", JsonLinesWriter::open_fd(987_654).unwrap_err());
        assert!(err.contains("/proc/self/fd/987654"), "{err}");
    }

    #[test]
    fn schema_is_not_vacuous() {
        let schema: serde_json::Value = serde_json::from_str(SCHEMA).unwrap();
        let validator = jsonschema::validator_for(&schema).unwrap();
        let bad = [
            serde_json::json!({"type": "Start"}),
            serde_json::json!({"type": "ProgressBytes", "task": "pulling"}),
            serde_json::json!({"type": "Bogus", "version": "1"}),
        ];
        for v in bad {
            assert!(!validator.is_valid(&v), "{v}");
        }
    }
}
