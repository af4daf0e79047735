//! Pull progress: the `progress-v0` JSON Lines events and their renderers.
//!
//! - [`Event`], [`SubTaskBytes`], [`SubTaskStep`]: the events of upstream
//!   bootc's `--progress-fd` protocol, serialized with its field names
//!   (`/work/shared/reference/progress-v0.schema.json`).
//! - [`JsonLinesWriter`]: writes one event per line to the file descriptor
//!   named by `--progress-fd`, preceded by a `Start` event.
//! - [`PullProgress`]: a [`composefs_oci::ProgressReporter`] that turns the
//!   layer events of a composefs pull into terminal bars
//!   ([`ProgressMode::Terminal`]), `ProgressBytes` events
//!   ([`ProgressMode::Json`]) or nothing ([`ProgressMode::Quiet`]). Hand it
//!   to the pull as `PullOptions { progress: Some(Arc::new(progress)), .. }`
//!   (keeping a clone of the `Arc` to call [`PullProgress::finish`]).
//!
//! # Mapping composefs events to `ProgressBytes`
//!
//! composefs reports one *component* per layer, identified by its diff ID:
//! `Started` (with the compressed size), `Progress`, `Done`, or `Skipped`
//! when the layer is already in the repository. Each event becomes one
//! `ProgressBytes` with task `pulling`, id the image reference, and:
//!
//! - `steps`: layers finished, fetched or already present; `stepsCached`:
//!   those already present; `stepsTotal`: the layer count if known
//!   ([`PullProgress::set_layer_count`]), else the layers seen so far;
//! - `bytes`/`bytesTotal`: compressed bytes fetched / to fetch over the
//!   layers fetched in this run (`bytesTotal` is 0, "unspecified", while a
//!   layer's size is unknown); `bytesCached` is 0 because composefs does not
//!   report the size of a layer it skips;
//! - `subtasks`: every layer seen, in order, as subtask `layer` with the
//!   layer's diff ID as id (a finished layer has `bytes == bytesTotal`).
//!
//! `Started`, `Done` and `Skipped` are always written; `Progress` updates at
//! most [`REFRESH_INTERVAL`] apart, as upstream does.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use composefs_oci::progress::{ProgressEvent, ProgressReporter, ProgressUnit};
use indicatif::{HumanBytes, HumanDuration, MultiProgress, ProgressBar, ProgressStyle};

use crate::imgref::ImageRef;

mod events;

pub use events::{
    Event, JsonLinesWriter, PROGRESS_API_VERSION, REFRESH_INTERVAL, SubTaskBytes, SubTaskStep,
};

/// The `task` of pull events.
const TASK_PULLING: &str = "pulling";
/// The `subtask` of per-layer entries.
const SUBTASK_LAYER: &str = "layer";
/// Characters of a digest shown to people: `sha256:` and 12 hex digits, as
/// podman shows them.
const SHORT_DIGEST_LEN: usize = 7 + 12;

/// How [`PullProgress`] reports.
#[derive(Debug)]
pub enum ProgressMode {
    /// Progress bars on stderr when it is a terminal (one per layer being
    /// fetched, with bytes and rate, labelled "layer n of m"); otherwise a
    /// line per fetched layer and a summary.
    Terminal,
    /// `ProgressBytes` events for `--progress-fd`.
    Json(JsonLinesWriter),
    /// Nothing.
    Quiet,
}

/// Reports the progress of one image pull; implements composefs'
/// [`ProgressReporter`].
#[derive(Debug)]
pub struct PullProgress {
    image: String,
    output: Output,
    state: Mutex<PullState>,
}

#[derive(Debug)]
enum Output {
    Terminal(Terminal),
    Json(JsonLinesWriter),
    Quiet,
}

#[derive(Debug)]
struct Terminal {
    /// Bars are drawn only when stderr is a terminal.
    bars: Option<MultiProgress>,
}

#[derive(Debug, Default)]
struct PullState {
    /// Layers in the order first seen.
    layers: Vec<Layer>,
    /// Index into `layers` by component id.
    index: HashMap<String, usize>,
    /// The layer count, if the caller knows it.
    layer_count: Option<u64>,
    /// When the first layer started, for the summary rate.
    started: Option<Instant>,
    finished: bool,
}

#[derive(Debug)]
struct Layer {
    id: String,
    unit: ProgressUnit,
    fetched: u64,
    total: Option<u64>,
    status: LayerStatus,
    bar: Option<ProgressBar>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LayerStatus {
    Fetching,
    Fetched,
    Cached,
}

impl PullProgress {
    /// A reporter for pulling `image` in `mode`.
    pub fn new(image: &ImageRef, mode: ProgressMode) -> Self {
        let output = match mode {
            ProgressMode::Terminal => Output::Terminal(Terminal {
                bars: std::io::stderr().is_terminal().then(MultiProgress::new),
            }),
            ProgressMode::Json(w) => Output::Json(w),
            ProgressMode::Quiet => Output::Quiet,
        };
        PullProgress {
            image: image.to_string(),
            output,
            state: Mutex::new(PullState::default()),
        }
    }

    /// Sets the number of layers of the image, for "layer n of m" and
    /// `stepsTotal`; without it the layers seen so far are counted.
    pub fn set_layer_count(&self, count: u64) {
        self.lock().layer_count = Some(count);
    }

    /// Ends the report: clears the bars and prints a summary (terminal), or
    /// writes the final state (JSON). Calling it again does nothing.
    pub fn finish(&self) {
        let mut state = self.lock();
        if state.finished {
            return;
        }
        state.finished = true;
        for layer in &mut state.layers {
            if let Some(bar) = layer.bar.take() {
                bar.finish_and_clear();
            }
        }
        match &self.output {
            Output::Terminal(t) => {
                if let Some(bars) = &t.bars
                    && let Err(e) = bars.clear()
                {
                    tracing::debug!("Clearing progress bars: {e}");
                }
                if let Some(summary) = state.summary() {
                    self.println(&summary);
                }
            }
            Output::Json(w) => w.send(&self.bytes_event(&state)),
            Output::Quiet => {}
        }
    }

    fn lock(&self) -> MutexGuard<'_, PullState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Prints a line above the bars, or to stderr when there are none.
    fn println(&self, line: &str) {
        match &self.output {
            Output::Terminal(Terminal { bars: Some(bars) }) => {
                if let Err(e) = bars.println(line) {
                    tracing::debug!("Printing progress line: {e}");
                }
            }
            Output::Terminal(Terminal { bars: None }) => eprintln!("{line}"),
            Output::Json(_) | Output::Quiet => {}
        }
    }

    /// The `ProgressBytes` event describing `state`.
    fn bytes_event(&self, state: &PullState) -> Event {
        let mut bytes = 0u64;
        let mut bytes_total = 0u64;
        let mut total_known = true;
        let mut steps = 0u64;
        let mut steps_cached = 0u64;
        let mut subtasks = Vec::with_capacity(state.layers.len());
        for layer in &state.layers {
            match layer.status {
                LayerStatus::Cached => {
                    steps += 1;
                    steps_cached += 1;
                }
                LayerStatus::Fetched => steps += 1,
                LayerStatus::Fetching => {}
            }
            let counts_bytes =
                layer.unit == ProgressUnit::Bytes && layer.status != LayerStatus::Cached;
            if counts_bytes {
                bytes = bytes.saturating_add(layer.fetched);
                match layer.total {
                    Some(t) => bytes_total = bytes_total.saturating_add(t),
                    None => total_known = false,
                }
            }
            let (sub_bytes, sub_total) = if counts_bytes {
                (layer.fetched, layer.total.unwrap_or(0))
            } else {
                (0, 0)
            };
            subtasks.push(SubTaskBytes {
                subtask: SUBTASK_LAYER.to_owned(),
                description: format!("layer {}", short_digest(&layer.id)),
                id: layer.id.clone(),
                bytes_cached: 0,
                bytes: sub_bytes,
                bytes_total: sub_total,
            });
        }
        Event::ProgressBytes {
            task: TASK_PULLING.to_owned(),
            description: format!("Pulling {}", self.image),
            id: self.image.clone(),
            bytes_cached: 0,
            bytes,
            bytes_total: if total_known { bytes_total } else { 0 },
            steps_cached,
            steps,
            steps_total: state.steps_total().max(steps),
            subtasks,
        }
    }

    /// Records `event` in `state`; returns whether the event must be
    /// written (as opposed to a droppable byte update).
    fn apply(&self, state: &mut PullState, event: ProgressEvent) -> bool {
        match event {
            ProgressEvent::Started { id, total, unit } => {
                let i = state.layer_index(id.into_inner(), unit);
                state.started.get_or_insert_with(Instant::now);
                let label = state.label(i);
                let layer = &mut state.layers[i];
                layer.unit = unit;
                layer.total = total;
                layer.status = LayerStatus::Fetching;
                if let Output::Terminal(Terminal { bars: Some(bars) }) = &self.output
                    && layer.bar.is_none()
                {
                    let bar = match total {
                        Some(t) => ProgressBar::new(t),
                        None => ProgressBar::new_spinner(),
                    };
                    bar.set_style(bar_style(unit, total.is_some()));
                    bar.set_message(label);
                    layer.bar = Some(bars.add(bar));
                }
                true
            }
            ProgressEvent::Progress { id, fetched, total } => {
                let Some(&i) = state.index.get(id.as_str()) else {
                    // Bytes for a layer never started: nothing to attach them to.
                    tracing::debug!("Progress for unknown component {id}");
                    return false;
                };
                let layer = &mut state.layers[i];
                layer.fetched = fetched;
                if total.is_some() {
                    layer.total = total;
                }
                if let Some(bar) = &layer.bar {
                    if let Some(t) = total {
                        bar.set_length(t);
                    }
                    bar.set_position(fetched);
                }
                false
            }
            ProgressEvent::Done { id, transferred } => {
                let i = state.layer_index(id.into_inner(), ProgressUnit::Bytes);
                let label = state.label(i);
                let layer = &mut state.layers[i];
                layer.status = LayerStatus::Fetched;
                layer.fetched = layer.fetched.max(transferred);
                layer.total = Some(layer.fetched.max(layer.total.unwrap_or(0)));
                // A finished layer reports bytes == bytesTotal.
                layer.fetched = layer.total.unwrap_or(layer.fetched);
                if let Some(bar) = layer.bar.take() {
                    bar.finish_and_clear();
                }
                if matches!(self.output, Output::Terminal(Terminal { bars: None })) {
                    let size = match layer.unit {
                        ProgressUnit::Items => format!("{} items", layer.fetched),
                        _ => HumanBytes(layer.fetched).to_string(),
                    };
                    eprintln!("Fetched {label} ({size})");
                }
                true
            }
            ProgressEvent::Skipped { id } => {
                let i = state.layer_index(id.into_inner(), ProgressUnit::Bytes);
                let layer = &mut state.layers[i];
                layer.status = LayerStatus::Cached;
                if let Some(bar) = layer.bar.take() {
                    bar.finish_and_clear();
                }
                true
            }
            ProgressEvent::Message(msg) => {
                match &self.output {
                    Output::Terminal(_) => self.println(&msg),
                    Output::Json(_) | Output::Quiet => tracing::debug!("{msg}"),
                }
                false
            }
            // `ProgressEvent` is non-exhaustive; later kinds are not shown.
            other => {
                tracing::debug!("Unhandled progress event {other:?}");
                false
            }
        }
    }
}

impl PullState {
    /// The index of layer `id`, adding it if new.
    fn layer_index(&mut self, id: String, unit: ProgressUnit) -> usize {
        if let Some(&i) = self.index.get(&id) {
            return i;
        }
        let i = self.layers.len();
        self.index.insert(id.clone(), i);
        self.layers.push(Layer {
            id,
            unit,
            fetched: 0,
            total: None,
            status: LayerStatus::Fetching,
            bar: None,
        });
        i
    }

    fn steps_total(&self) -> u64 {
        let seen = u64::try_from(self.layers.len()).unwrap_or(u64::MAX);
        self.layer_count.unwrap_or(seen).max(seen)
    }

    /// "layer n of m sha256:0123456789ab" for layer `i`; just "layer n …"
    /// while the layer count is unknown (composefs does not report it), rather
    /// than a misleading "n of n".
    fn label(&self, i: usize) -> String {
        let id = short_digest(&self.layers[i].id);
        match self.layer_count {
            Some(m) => format!("layer {} of {m} {id}", i + 1),
            None => format!("layer {} {id}", i + 1),
        }
    }

    /// The closing line: layers and bytes fetched, time, rate, and how many
    /// layers were already present. `None` if nothing happened.
    fn summary(&self) -> Option<String> {
        if self.layers.is_empty() {
            return None;
        }
        let fetched: Vec<&Layer> = self
            .layers
            .iter()
            .filter(|l| l.status == LayerStatus::Fetched)
            .collect();
        let cached = self
            .layers
            .iter()
            .filter(|l| l.status == LayerStatus::Cached)
            .count();
        let bytes: u64 = fetched
            .iter()
            .filter(|l| l.unit == ProgressUnit::Bytes)
            .map(|l| l.fetched)
            .sum();
        let mut line = format!("Fetched {} layers ({})", fetched.len(), HumanBytes(bytes));
        if let Some(started) = self.started {
            let elapsed = started.elapsed();
            let secs = elapsed.as_secs_f64();
            if secs > 0.0 {
                // Whole bytes per second are precise enough for display.
                let rate = (bytes as f64 / secs) as u64;
                line.push_str(&format!(
                    " in {} ({}/s)",
                    HumanDuration(elapsed),
                    HumanBytes(rate)
                ));
            }
        }
        if cached > 0 {
            line.push_str(&format!("; {cached} already present"));
        }
        Some(line)
    }
}

impl ProgressReporter for PullProgress {
    fn report(&self, event: ProgressEvent) {
        let mut state = self.lock();
        if state.finished {
            return;
        }
        let required = self.apply(&mut state, event);
        if let Output::Json(w) = &self.output {
            let ev = self.bytes_event(&state);
            if required {
                w.send(&ev);
            } else if !state.layers.is_empty() {
                w.send_lossy(&ev);
            }
        }
    }
}

/// The bar style for a layer being fetched.
fn bar_style(unit: ProgressUnit, known_total: bool) -> ProgressStyle {
    let template = match (unit, known_total) {
        (ProgressUnit::Bytes, true) => {
            "{msg} [{bar:25}] {binary_bytes}/{binary_total_bytes} ({binary_bytes_per_sec}, {eta})"
        }
        (ProgressUnit::Bytes, false) => "{msg} {spinner} {binary_bytes} ({binary_bytes_per_sec})",
        (_, true) => "{msg} [{bar:25}] {pos}/{len}",
        (_, false) => "{msg} {spinner} {pos}",
    };
    ProgressStyle::with_template(template)
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|e| {
            tracing::debug!("Invalid progress template: {e}");
            ProgressStyle::default_bar()
        })
}

/// `sha256:` and the first 12 hex digits.
fn short_digest(id: &str) -> &str {
    match id.char_indices().nth(SHORT_DIGEST_LEN) {
        Some((i, _)) => &id[..i],
        None => id,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use composefs_oci::progress::SharedReporter;

    use super::events::test_support::{Sink, validate_all};
    use super::*;

    const L1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const L2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
    const L3: &str = "sha256:3333333333333333333333333333333333333333333333333333333333333333";

    /// A pull of three layers: one already present, two fetched
    /// concurrently, interleaved with messages and byte updates.
    fn synthetic_pull() -> Vec<ProgressEvent> {
        vec![
            ProgressEvent::Message("Fetching config sha256:cafe".into()),
            ProgressEvent::Skipped { id: L1.into() },
            ProgressEvent::Started {
                id: L2.into(),
                total: Some(1000),
                unit: ProgressUnit::Bytes,
            },
            ProgressEvent::Started {
                id: L3.into(),
                total: Some(50),
                unit: ProgressUnit::Bytes,
            },
            ProgressEvent::Progress {
                id: L2.into(),
                fetched: 100,
                total: Some(1000),
            },
            ProgressEvent::Progress {
                id: L3.into(),
                fetched: 50,
                total: Some(50),
            },
            ProgressEvent::Done {
                id: L3.into(),
                transferred: 50,
            },
            ProgressEvent::Progress {
                id: L2.into(),
                fetched: 900,
                total: Some(1000),
            },
            ProgressEvent::Progress {
                id: "sha256:unknown".into(),
                fetched: 1,
                total: None,
            },
            ProgressEvent::Done {
                id: L2.into(),
                transferred: 1000,
            },
            ProgressEvent::Message("Storing manifest sha256:beef".into()),
        ]
    }

    #[test]
    fn json_mode_emits_schema_valid_lines() {
        let sink = Sink::default();
        let image = ImageRef::parse("quay.io/example/os:42").unwrap();
        let progress = Arc::new(PullProgress::new(
            &image,
            ProgressMode::Json(JsonLinesWriter::from_writer(sink.clone())),
        ));
        progress.set_layer_count(3);
        let reporter: SharedReporter = progress.clone();
        for event in synthetic_pull() {
            reporter.report(event);
        }
        progress.finish();
        progress.finish();
        reporter.report(ProgressEvent::Skipped { id: L1.into() });

        let lines = sink.lines();
        validate_all(&lines);
        assert_eq!(
            lines[0],
            serde_json::json!({"type": "Start", "version": "0.1.0"})
        );
        assert!(lines[1..].iter().all(|l| l["type"] == "ProgressBytes"));
        // Start, then Started/Done/Skipped are never dropped: 1 skip + 2
        // starts + 2 dones + finish.
        assert!(lines.len() >= 7, "{}", lines.len());

        let last = lines.last().unwrap();
        assert_eq!(last["task"], "pulling");
        assert_eq!(last["id"], "quay.io/example/os:42");
        assert_eq!(last["description"], "Pulling quay.io/example/os:42");
        assert_eq!(last["steps"], 3);
        assert_eq!(last["stepsCached"], 1);
        assert_eq!(last["stepsTotal"], 3);
        assert_eq!(last["bytes"], 1050);
        assert_eq!(last["bytesTotal"], 1050);
        let subtasks = last["subtasks"].as_array().unwrap();
        let ids: Vec<&str> = subtasks.iter().map(|s| s["id"].as_str().unwrap()).collect();
        assert_eq!(ids, [L1, L2, L3]);
        for s in subtasks {
            assert_eq!(s["subtask"], "layer");
            assert_eq!(s["bytes"], s["bytesTotal"], "{s}");
        }
        assert_eq!(subtasks[1]["description"], "layer sha256:222222222222");

        // The first event after Start records the skipped layer alone.
        assert_eq!(lines[1]["steps"], 1);
        assert_eq!(lines[1]["stepsCached"], 1);
    }

    #[test]
    fn unknown_sizes_are_unspecified() {
        let sink = Sink::default();
        let image = ImageRef::parse("containers-storage:localhost/os").unwrap();
        let progress = PullProgress::new(
            &image,
            ProgressMode::Json(JsonLinesWriter::from_writer(sink.clone())),
        );
        progress.report(ProgressEvent::Started {
            id: L1.into(),
            total: None,
            unit: ProgressUnit::Bytes,
        });
        let lines = sink.lines();
        validate_all(&lines);
        let last = lines.last().unwrap();
        assert_eq!(last["bytesTotal"], 0);
        assert_eq!(last["id"], "containers-storage:localhost/os");
        assert_eq!(last["stepsTotal"], 1);
        assert_eq!(last["steps"], 0);

        progress.report(ProgressEvent::Done {
            id: L1.into(),
            transferred: 4096,
        });
        progress.report(ProgressEvent::Started {
            id: L2.into(),
            total: Some(10),
            unit: ProgressUnit::Items,
        });
        progress.report(ProgressEvent::Done {
            id: L2.into(),
            transferred: 10,
        });
        let lines = sink.lines();
        validate_all(&lines);
        let last = lines.last().unwrap();
        // Item counts are not bytes.
        assert_eq!(last["bytes"], 4096);
        assert_eq!(last["bytesTotal"], 4096);
        assert_eq!(last["steps"], 2);
    }

    #[test]
    fn quiet_and_terminal_modes_accept_every_event() {
        let image = ImageRef::parse("oci:/srv/layout").unwrap();
        for mode in [ProgressMode::Quiet, ProgressMode::Terminal] {
            let progress = PullProgress::new(&image, mode);
            for event in synthetic_pull() {
                progress.report(event);
            }
            progress.finish();
        }
    }

    #[test]
    fn summary_line() {
        let image = ImageRef::parse("quay.io/example/os").unwrap();
        let progress = PullProgress::new(&image, ProgressMode::Quiet);
        assert_eq!(progress.lock().summary(), None);
        for event in synthetic_pull() {
            progress.report(event);
        }
        let summary = progress.lock().summary().unwrap();
        assert!(
            summary.starts_with("Fetched 2 layers (1.03 KiB)"),
            "{summary}"
        );
        assert!(summary.ends_with("; 1 already present"), "{summary}");
        // The count is unknown until someone sets it: no made-up "of m".
        assert_eq!(progress.lock().label(1), "layer 2 sha256:222222222222");
        progress.set_layer_count(3);
        assert_eq!(progress.lock().label(1), "layer 2 of 3 sha256:222222222222");
    }

    #[test]
    fn short_digests() {
        assert_eq!(short_digest(L1), "sha256:111111111111");
        assert_eq!(short_digest("short"), "short");
    }
}
