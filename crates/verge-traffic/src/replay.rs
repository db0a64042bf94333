//! Replay of SUMO detector output files: a streaming parser for E1 (induction loop) and E2
//! (lane-area detector) files and a source that merges the two in time order and releases the
//! rows as (accelerated) time passes.
//!
//! [`DetectorParser`] reads any [`BufRead`] incrementally: it holds one element at a time (a SUMO
//! row is about 1 KB), never the file, so a 50 MB file replays in constant memory.
//! [`ReplaySource`] is polled like [`crate::SyntheticSource::poll`] with the current time.
//!
//! # The rules
//!
//! - **Rows.** Every `<interval>` element is a row; everything else (the XML declaration, the
//!   comment holding SUMO's configuration, the `<detector>` root) is skipped. A row becomes a
//!   [`Reading`] with `sensor` = `id` and `ts_ms = base_epoch_ms + end * 1000` (the *end* of the
//!   interval, rounded to the millisecond), and
//!   - E1: count = `nVehContrib`, occupancy = `occupancy`, speed = `speed`, queue = 0;
//!   - E2: count = `nVehEntered`, occupancy = `meanOccupancy`, speed = `meanSpeed`,
//!     queue = `maxJamLengthInVehicles`.
//! - **No vehicle.** SUMO writes speed -1 when no vehicle was measured. With count 0 that
//!   becomes speed 0 (the aggregator ignores the speed of zero-count readings); -1 with a count
//!   above 0 contradicts itself and the row is an error.
//! - **Errors name the line and the attribute** ([`ParseError`]): a missing or unparsable
//!   attribute, an impossible `end`, malformed markup. The parser reports the error and goes on
//!   with the next row; where the markup cannot be resynchronised (the file ends inside an
//!   element: truncated), it reports that and stops. A file that ends before its root element
//!   is closed is reported as truncated too, after every complete row has been returned.
//!   Physical bounds are not the parser's business: [`crate::Validator`] checks them.
//! - **Line numbers** are those of the line an element *ends* on (SUMO writes a row per line).
//! - **Replay time.** The first poll anchors replay: its `now_ms` corresponds to the earliest
//!   row's `ts_ms`. A row is due when `(ts_ms - first_ts_ms) <= (now_ms - first_now_ms) * speed`.
//!   Rows of the two files come out merged by `ts_ms` (E1 before E2 on a tie); each file must
//!   itself be in time order, as SUMO writes it.
//! - **Bounds.** One poll returns at most [`POLL_READINGS_MAX`] readings and examines at most
//!   [`POLL_ROWS_MAX`] rows (rows filtered out and errors count), so a caller that stalled
//!   catches up in bounded steps.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use quick_xml::XmlVersion;
use quick_xml::events::{BytesStart, Event};

use crate::Reading;
use crate::detector::{DetectorKind, tls_of};

/// The most readings one [`ReplaySource::poll`] returns.
pub const POLL_READINGS_MAX: usize = 10_000;
/// The most rows (readings, filtered rows and errors together) one poll examines.
pub const POLL_ROWS_MAX: usize = 100_000;
/// The longest element (or text or comment between elements) read, in bytes; a SUMO row is
/// about 1 KB.
pub const ELEMENT_BYTES_MAX: usize = 1024 * 1024;
/// The latest interval end accepted, in seconds (about 317 years of simulated time).
pub const END_S_MAX: f64 = 1e10;

/// Why a row (or the rest of a file) could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParseError {
    /// A row lacks an attribute the mapping needs.
    #[error("line {line}: <interval> has no `{attr}` attribute")]
    Missing {
        /// The line the row ends on.
        line: u64,
        /// The attribute.
        attr: &'static str,
    },
    /// An attribute's value is not a number, or not a possible one.
    #[error("line {line}: {attr}=\"{value}\" {reason}")]
    Invalid {
        /// The line the row ends on.
        line: u64,
        /// The attribute.
        attr: &'static str,
        /// The value as written in the file.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The markup is not well-formed; the parser goes on after it.
    #[error("line {line}: malformed XML: {message}")]
    Xml {
        /// The line where the problem was found.
        line: u64,
        /// What the XML reader said.
        message: String,
    },
    /// The file ends inside an element or before its root element closes; nothing follows.
    #[error("line {line}: the file is truncated: {message}")]
    Truncated {
        /// The last line.
        line: u64,
        /// What is cut off.
        message: String,
    },
    /// An element is longer than [`ELEMENT_BYTES_MAX`]: not a SUMO detector file. Nothing
    /// follows.
    #[error("line {line}: an element is longer than {ELEMENT_BYTES_MAX} bytes")]
    TooLarge {
        /// The line reached.
        line: u64,
    },
    /// Reading the file failed; nothing follows.
    #[error("line {line}: read failed: {message}")]
    Io {
        /// The line reached.
        line: u64,
        /// The I/O error.
        message: String,
    },
}

impl ParseError {
    /// The line of the file the error is on (1-based).
    pub fn line(&self) -> u64 {
        match self {
            ParseError::Missing { line, .. }
            | ParseError::Invalid { line, .. }
            | ParseError::Xml { line, .. }
            | ParseError::Truncated { line, .. }
            | ParseError::TooLarge { line }
            | ParseError::Io { line, .. } => *line,
        }
    }

    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ParseError::Missing { .. } => "missing_attribute",
            ParseError::Invalid { .. } => "invalid_attribute",
            ParseError::Xml { .. } => "malformed_xml",
            ParseError::Truncated { .. } => "truncated",
            ParseError::TooLarge { .. } => "element_too_large",
            ParseError::Io { .. } => "io",
        }
    }
}

/// A [`BufRead`] that counts the newlines its user has consumed, so errors can name a line,
/// and refuses to feed one element past [`ELEMENT_BYTES_MAX`], so a file without `>` cannot
/// make the XML reader buffer all of it.
#[derive(Debug)]
struct LineCounter<R> {
    inner: R,
    newlines: u64,
    /// Bytes consumed since the parser last started reading an event.
    since_event: usize,
}

impl<R: BufRead> Read for LineCounter<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.newlines += count_newlines(&buf[..n]);
        self.since_event += n;
        Ok(n)
    }
}

impl<R: BufRead> BufRead for LineCounter<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.since_event > ELEMENT_BYTES_MAX {
            return Err(io::Error::other(TooLarge));
        }
        self.inner.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        if amt == 0 {
            return;
        }
        // The buffer is already filled (the caller just saw it), so this does no I/O.
        if let Ok(buf) = self.inner.fill_buf() {
            self.newlines += count_newlines(&buf[..amt.min(buf.len())]);
        }
        self.since_event += amt;
        self.inner.consume(amt);
    }
}

/// The I/O error [`LineCounter`] raises for an element over [`ELEMENT_BYTES_MAX`].
#[derive(Debug, thiserror::Error)]
#[error("an element is longer than {ELEMENT_BYTES_MAX} bytes")]
struct TooLarge;

fn count_newlines(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&b| b == b'\n').count() as u64
}

/// Attribute names of one kind of row, in the order they are checked.
struct Attrs {
    count: &'static str,
    occupancy: &'static str,
    speed: &'static str,
    /// `None`: the kind has no queue (E1), which is 0.
    queue: Option<&'static str>,
}

const E1_ATTRS: Attrs = Attrs {
    count: "nVehContrib",
    occupancy: "occupancy",
    speed: "speed",
    queue: None,
};

const E2_ATTRS: Attrs = Attrs {
    count: "nVehEntered",
    occupancy: "meanOccupancy",
    speed: "meanSpeed",
    queue: Some("maxJamLengthInVehicles"),
};

/// Parses the `<interval>` rows of one SUMO E1 or E2 output file, one at a time. An iterator of
/// readings and errors; see the module docs for the rules.
#[derive(Debug)]
pub struct DetectorParser<R> {
    reader: quick_xml::Reader<LineCounter<R>>,
    buf: Vec<u8>,
    kind: DetectorKind,
    base_epoch_ms: i64,
    /// Open elements (the `<detector>` root, a row written as start and end tag).
    depth: u64,
    /// Where the last error was found; an error at the same place again means no progress.
    last_error_at: Option<u64>,
    done: bool,
}

impl<R: BufRead> DetectorParser<R> {
    /// A parser of an E1 or E2 (`kind`) file read from `input`, stamping readings
    /// `base_epoch_ms + end * 1000`.
    pub fn new(input: R, kind: DetectorKind, base_epoch_ms: i64) -> Self {
        let mut reader = quick_xml::Reader::from_reader(LineCounter {
            inner: input,
            newlines: 0,
            since_event: 0,
        });
        reader.config_mut().trim_text(true);
        Self {
            reader,
            buf: Vec::with_capacity(2048),
            kind,
            base_epoch_ms,
            depth: 0,
            last_error_at: None,
            done: false,
        }
    }

    /// The kind of file this parser reads.
    pub fn kind(&self) -> DetectorKind {
        self.kind
    }

    fn line(&self) -> u64 {
        self.reader.get_ref().newlines + 1
    }
}

impl<R: BufRead> Iterator for DetectorParser<R> {
    type Item = Result<Reading, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            self.buf.clear();
            self.reader.get_mut().since_event = 0;
            let event = self.reader.read_event_into(&mut self.buf);
            let line = self.reader.get_ref().newlines + 1;
            match event {
                Ok(Event::Start(e)) => {
                    self.depth += 1;
                    if e.name().as_ref() == "interval" {
                        return Some(parse_row(&e, self.kind, self.base_epoch_ms, line));
                    }
                }
                Ok(Event::Empty(e)) => {
                    if e.name().as_ref() == "interval" {
                        return Some(parse_row(&e, self.kind, self.base_epoch_ms, line));
                    }
                }
                Ok(Event::End(_)) => self.depth = self.depth.saturating_sub(1),
                Ok(Event::Eof) => {
                    self.done = true;
                    if self.depth > 0 {
                        return Some(Err(ParseError::Truncated {
                            line: self.line(),
                            message: "the file ends before its root element is closed".into(),
                        }));
                    }
                }
                Ok(_) => {}
                Err(quick_xml::Error::Io(e)) => {
                    self.done = true;
                    if e.get_ref().is_some_and(|inner| inner.is::<TooLarge>()) {
                        return Some(Err(ParseError::TooLarge { line }));
                    }
                    return Some(Err(ParseError::Io {
                        line,
                        message: e.to_string(),
                    }));
                }
                Err(quick_xml::Error::Syntax(e)) => {
                    // Every syntax error is "the input ended inside ...".
                    self.done = true;
                    return Some(Err(ParseError::Truncated {
                        line,
                        message: e.to_string(),
                    }));
                }
                Err(e) => {
                    let at = self.reader.buffer_position();
                    if self.last_error_at == Some(at) {
                        self.done = true;
                    }
                    self.last_error_at = Some(at);
                    return Some(Err(ParseError::Xml {
                        line,
                        message: e.to_string(),
                    }));
                }
            }
        }
        None
    }
}

/// The detectors an additional file declares (SUMO's `detectors.add.xml`): every
/// `<inductionLoop>` (E1) and `<laneAreaDetector>` / `<e2Detector>` (E2) with its `id`, in file
/// order. This is the expected set a replaying node gives its [`crate::Validator`] (filtered by
/// [`crate::detector::belongs_to`]) and the input of [`crate::detector::approaches_for`].
///
/// # Errors
///
/// The first [`ParseError`]: malformed markup, a detector without an `id`, a read failure.
pub fn declared_detectors<R: BufRead>(input: R) -> Result<Vec<(String, DetectorKind)>, ParseError> {
    let mut reader = quick_xml::Reader::from_reader(LineCounter {
        inner: input,
        newlines: 0,
        since_event: 0,
    });
    let mut buf = Vec::new();
    let mut out = Vec::new();
    loop {
        buf.clear();
        reader.get_mut().since_event = 0;
        let event = reader.read_event_into(&mut buf);
        let line = reader.get_ref().newlines + 1;
        let e = match event {
            Ok(Event::Start(e) | Event::Empty(e)) => e,
            Ok(Event::Eof) => return Ok(out),
            Ok(_) => continue,
            Err(quick_xml::Error::Syntax(e)) => {
                return Err(ParseError::Truncated {
                    line,
                    message: e.to_string(),
                });
            }
            Err(e) => {
                return Err(ParseError::Xml {
                    line,
                    message: e.to_string(),
                });
            }
        };
        let kind = match e.name().as_ref() {
            "inductionLoop" => DetectorKind::E1,
            "laneAreaDetector" | "e2Detector" => DetectorKind::E2,
            _ => continue,
        };
        let id = e
            .try_get_attribute("id")
            .map_err(|err| ParseError::Xml {
                line,
                message: err.to_string(),
            })?
            .ok_or(ParseError::Missing { line, attr: "id" })?;
        let id = id
            .normalized_value(XmlVersion::Implicit1_0)
            .map_err(|err| ParseError::Xml {
                line,
                message: err.to_string(),
            })?;
        out.push((id.into_owned(), kind));
    }
}

/// An attribute value parsed as a number.
fn number(line: u64, attr: &'static str, raw: &str) -> Result<f64, ParseError> {
    raw.trim().parse::<f64>().map_err(|_| ParseError::Invalid {
        line,
        attr,
        value: raw.to_owned(),
        reason: "is not a number",
    })
}

fn parse_row(
    e: &BytesStart<'_>,
    kind: DetectorKind,
    base_epoch_ms: i64,
    line: u64,
) -> Result<Reading, ParseError> {
    let names = match kind {
        DetectorKind::E1 => &E1_ATTRS,
        DetectorKind::E2 => &E2_ATTRS,
    };
    let mut id = None;
    let mut end = None;
    let mut count = None;
    let mut occupancy = None;
    let mut speed = None;
    let mut queue = None;
    for attr in e.attributes() {
        let attr = attr.map_err(|err| ParseError::Xml {
            line,
            message: err.to_string(),
        })?;
        let key = attr.key.as_ref();
        let slot: (&'static str, &mut Option<String>) = if key == "id" {
            ("id", &mut id)
        } else if key == "end" {
            ("end", &mut end)
        } else if key == names.count {
            (names.count, &mut count)
        } else if key == names.occupancy {
            (names.occupancy, &mut occupancy)
        } else if key == names.speed {
            (names.speed, &mut speed)
        } else if names.queue.is_some_and(|q| key == q) {
            (names.queue.unwrap_or_default(), &mut queue)
        } else {
            continue;
        };
        let value = attr
            .normalized_value(XmlVersion::Implicit1_0)
            .map_err(|err| ParseError::Invalid {
                line,
                attr: slot.0,
                value: attr.value.clone().into_owned(),
                reason: match err {
                    quick_xml::Error::Escape(_) => "has a bad escape",
                    _ => "cannot be decoded",
                },
            })?;
        *slot.1 = Some(value.into_owned());
    }
    let need = |v: Option<String>, attr: &'static str| v.ok_or(ParseError::Missing { line, attr });
    let sensor = need(id, "id")?;
    if sensor.is_empty() {
        return Err(ParseError::Invalid {
            line,
            attr: "id",
            value: sensor,
            reason: "is empty",
        });
    }
    let end_raw = need(end, "end")?;
    let count_raw = need(count, names.count)?;
    let occupancy_raw = need(occupancy, names.occupancy)?;
    let speed_raw = need(speed, names.speed)?;
    let queue = match names.queue {
        Some(attr) => number(line, attr, &need(queue, attr)?)?,
        None => 0.0,
    };
    let end_s = number(line, "end", &end_raw)?;
    let ts_ms = if (0.0..=END_S_MAX).contains(&end_s) {
        base_epoch_ms.checked_add((end_s * 1000.0).round() as i64)
    } else {
        None
    };
    let Some(ts_ms) = ts_ms else {
        return Err(ParseError::Invalid {
            line,
            attr: "end",
            value: end_raw,
            reason: "is not a time between 0 and 1e10 s after the base epoch",
        });
    };
    let count = number(line, names.count, &count_raw)?;
    let occupancy = number(line, names.occupancy, &occupancy_raw)?;
    let mut speed = number(line, names.speed, &speed_raw)?;
    if speed == -1.0 {
        if count == 0.0 {
            speed = 0.0;
        } else {
            return Err(ParseError::Invalid {
                line,
                attr: names.speed,
                value: speed_raw,
                reason: "means no vehicle, but the row counts vehicles",
            });
        }
    }
    Ok(Reading {
        sensor,
        ts_ms,
        count,
        occupancy,
        speed,
        queue,
    })
}

/// How a replay runs.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayConfig {
    /// Readings are stamped `base_epoch_ms + end * 1000` (SUMO times are seconds from the start
    /// of the simulation). A node replaying "live" passes its clock at start.
    pub base_epoch_ms: i64,
    /// Replay seconds per real second: 1 is real time, 10 is ten times faster. Must be finite
    /// and above 0.
    pub speed: f64,
    /// Only detectors of these traffic lights (`e?_<tls>_<lane>`); empty means every detector,
    /// including ids that do not follow the pattern.
    pub tls: BTreeSet<String>,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        Self {
            base_epoch_ms: 0,
            speed: 1.0,
            tls: BTreeSet::new(),
        }
    }
}

/// Why a replay could not start.
#[derive(Debug, thiserror::Error)]
pub enum ReplayOpenError {
    /// The speed factor is not a finite number above 0.
    #[error("replay speed is {0}; it must be a finite number above 0")]
    Speed(f64),
    /// A detector file could not be opened.
    #[error("cannot open detector file {path}: {source}")]
    Open {
        /// The file.
        path: String,
        /// The I/O error.
        source: io::Error,
    },
}

/// A row error of a replay, with the file it is in.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{} file, {error}", .file.prefix())]
pub struct ReplayError {
    /// The file (E1 or E2).
    pub file: DetectorKind,
    /// What is wrong.
    pub error: ParseError,
}

impl ReplayError {
    /// A short label for metrics (that of the parse error).
    pub fn kind(&self) -> &'static str {
        self.error.kind()
    }
}

/// What one [`ReplaySource::poll`] produced.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Polled {
    /// Readings now due, in time order.
    pub readings: Vec<Reading>,
    /// Rows that could not be read, in the order met.
    pub errors: Vec<ReplayError>,
    /// Every reading stamped at or before this time has been returned, by this poll or an
    /// earlier one: the replay's watermark. Short of the replay's clock when the poll stopped
    /// at its budget; `None` when nothing is known yet.
    pub through_ms: Option<i64>,
}

/// The contents of one detector file, as [`ReplaySource::new`] takes them.
pub type ReplayInput = Box<dyn BufRead + Send>;

/// One file of a replay with its next reading, read ahead by one.
struct Feed {
    parser: DetectorParser<ReplayInput>,
    next: Option<Reading>,
    ended: bool,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("kind", &self.parser.kind())
            .field("next", &self.next)
            .field("ended", &self.ended)
            .finish()
    }
}

/// Replays an E1 file, an E2 file or both, merged in time order. See the module docs.
#[derive(Debug)]
pub struct ReplaySource {
    cfg: ReplayConfig,
    /// E1 then E2; ties in time go to the first.
    feeds: Vec<Feed>,
    /// `(now_ms, ts_ms)` of the first poll and the earliest reading.
    anchor: Option<(i64, i64)>,
    /// Rows dropped by the traffic-light filter.
    filtered: u64,
    errors: u64,
    /// The watermark: every reading stamped at or before it has been polled.
    through_ms: Option<i64>,
}

impl ReplaySource {
    /// A replay of the given inputs (an E1 file's contents, an E2 file's, or both).
    ///
    /// # Errors
    ///
    /// [`ReplayOpenError::Speed`] if `cfg.speed` is not a finite number above 0.
    pub fn new(
        e1: Option<ReplayInput>,
        e2: Option<ReplayInput>,
        cfg: ReplayConfig,
    ) -> Result<Self, ReplayOpenError> {
        if !(cfg.speed.is_finite() && cfg.speed > 0.0) {
            return Err(ReplayOpenError::Speed(cfg.speed));
        }
        let feed = |input: ReplayInput, kind| Feed {
            parser: DetectorParser::new(input, kind, cfg.base_epoch_ms),
            next: None,
            ended: false,
        };
        let mut feeds = Vec::new();
        if let Some(input) = e1 {
            feeds.push(feed(input, DetectorKind::E1));
        }
        if let Some(input) = e2 {
            feeds.push(feed(input, DetectorKind::E2));
        }
        Ok(Self {
            cfg,
            feeds,
            anchor: None,
            filtered: 0,
            errors: 0,
            through_ms: None,
        })
    }

    /// A replay of the files at `e1` and/or `e2`, read through a buffer.
    ///
    /// # Errors
    ///
    /// [`ReplayOpenError`] if the speed is wrong or a file cannot be opened.
    pub fn open(
        e1: Option<&Path>,
        e2: Option<&Path>,
        cfg: ReplayConfig,
    ) -> Result<Self, ReplayOpenError> {
        let open = |p: Option<&Path>| -> Result<Option<ReplayInput>, ReplayOpenError> {
            p.map(|p| {
                File::open(p)
                    .map(|f| Box::new(BufReader::with_capacity(64 * 1024, f)) as ReplayInput)
                    .map_err(|source| ReplayOpenError::Open {
                        path: p.display().to_string(),
                        source,
                    })
            })
            .transpose()
        };
        Self::new(open(e1)?, open(e2)?, cfg)
    }

    /// Whether every row of every file has been returned.
    pub fn is_finished(&self) -> bool {
        self.feeds.iter().all(|f| f.ended && f.next.is_none())
    }

    /// Rows left out by the traffic-light filter so far.
    pub fn filtered(&self) -> u64 {
        self.filtered
    }

    /// Row errors met so far.
    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// The replay clock at real time `now_ms`: the event time up to which rows are due, or
    /// `None` before the first poll. A node replaying faster than real time advances its
    /// aggregation windows with this, not with its wall clock.
    pub fn replay_now_ms(&self, now_ms: i64) -> Option<i64> {
        self.anchor.map(|(now0, ts0)| {
            let elapsed = (now_ms - now0).max(0) as f64 * self.cfg.speed;
            ts0.saturating_add(elapsed.min(i64::MAX as f64) as i64)
        })
    }

    fn keep(&self, r: &Reading) -> bool {
        self.cfg.tls.is_empty() || tls_of(&r.sensor).is_some_and(|t| self.cfg.tls.contains(t))
    }

    /// Reads ahead until every feed has its next reading or has ended; at most `budget` rows.
    fn fill(&mut self, errors: &mut Vec<ReplayError>, budget: &mut usize) {
        for i in 0..self.feeds.len() {
            while self.feeds[i].next.is_none() && !self.feeds[i].ended && *budget > 0 {
                *budget -= 1;
                match self.feeds[i].parser.next() {
                    Some(Ok(r)) => {
                        if self.keep(&r) {
                            self.feeds[i].next = Some(r);
                        } else {
                            self.filtered += 1;
                        }
                    }
                    Some(Err(error)) => {
                        self.errors += 1;
                        errors.push(ReplayError {
                            file: self.feeds[i].parser.kind(),
                            error,
                        });
                    }
                    None => self.feeds[i].ended = true,
                }
            }
        }
    }

    /// The feed holding the earliest next reading (the first on a tie).
    fn earliest(&self) -> Option<usize> {
        let mut best: Option<(usize, i64)> = None;
        for (i, f) in self.feeds.iter().enumerate() {
            if let Some(r) = &f.next
                && best.is_none_or(|(_, ts)| r.ts_ms < ts)
            {
                best = Some((i, r.ts_ms));
            }
        }
        best.map(|(i, _)| i)
    }

    /// Whether every feed has its next reading or has ended, so the earliest is known.
    fn all_ready(&self) -> bool {
        self.feeds.iter().all(|f| f.next.is_some() || f.ended)
    }

    /// Every reading due at real time `now_ms` (see the module docs), with the errors met on
    /// the way; at most [`POLL_READINGS_MAX`] readings and [`POLL_ROWS_MAX`] rows examined.
    pub fn poll(&mut self, now_ms: i64) -> Polled {
        self.poll_bounded(now_ms, POLL_READINGS_MAX, POLL_ROWS_MAX)
    }

    fn poll_bounded(&mut self, now_ms: i64, readings_max: usize, rows_max: usize) -> Polled {
        let mut out = Polled::default();
        let mut budget = rows_max;
        // Whether the poll stopped because it reached the replay's clock or the end (rather than
        // a budget), so that everything up to the clock has been returned.
        let mut caught_up = false;
        while out.readings.len() < readings_max {
            self.fill(&mut out.errors, &mut budget);
            // A feed still reading ahead (the row budget ran out) may hold an earlier row.
            if !self.all_ready() {
                break;
            }
            let Some(i) = self.earliest() else {
                caught_up = true;
                break;
            };
            let ts = self.feeds[i].next.as_ref().map_or(0, |r| r.ts_ms);
            let (_, ts0) = *self.anchor.get_or_insert((now_ms, ts));
            if ts > self.replay_now_ms(now_ms).unwrap_or(ts0) {
                caught_up = true;
                break;
            }
            if let Some(r) = self.feeds[i].next.take() {
                out.readings.push(r);
            }
        }
        // Readings come in time order, so after a budget stop only rows stamped at or after the
        // last one returned can remain.
        let through = if caught_up {
            self.replay_now_ms(now_ms)
        } else {
            out.readings.last().map(|r| r.ts_ms - 1)
        };
        self.through_ms = self.through_ms.max(through);
        out.through_ms = self.through_ms;
        out
    }
}

/// Every row at once, ignoring time: for bulk replay and tests. Each item is a reading or the
/// error of a row that could not be read.
impl Iterator for ReplaySource {
    type Item = Result<Reading, ReplayError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut errors = Vec::new();
        let mut budget = 1;
        loop {
            self.fill(&mut errors, &mut budget);
            if let Some(e) = errors.pop() {
                return Some(Err(e));
            }
            if self.all_ready() {
                let i = self.earliest()?;
                return self.feeds[i].next.take().map(Ok);
            }
            budget = 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const E1: &str = r#"<?xml version="1.0" encoding="UTF-8"?>

<!-- generated by Eclipse SUMO
<configuration>
    <input><net-file value="grid.net.xml"/></input>
</configuration>
-->

<detector xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
    <interval begin="0.00" end="5.00" id="e1_A1_A0A1_0" nVehContrib="0" flow="0.00" occupancy="0.00" speed="-1.00" harmonicMeanSpeed="-1.00" length="-1.00" nVehEntered="0"/>
    <interval begin="0.00" end="5.00" id="e1_B1_A1B1_0" nVehContrib="2" flow="1440.00" occupancy="12.81" speed="7.80" harmonicMeanSpeed="7.80" length="5.00" nVehEntered="2"/>
    <interval begin="5.00" end="10.00" id="e1_A1_A0A1_0" nVehContrib="1" flow="720.00" occupancy="3.50" speed="12.25" harmonicMeanSpeed="12.20" length="5.00" nVehEntered="1"/>
</detector>
"#;

    const E2: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<detector>
   <interval begin="0.00" end="5.00" id="e2_A1_A0A1_0" sampledSeconds="0.00" nVehEntered="0" meanSpeed="-1.00" meanOccupancy="0.00" maxJamLengthInVehicles="0" />
   <interval begin="5.00" end="10.00" id="e2_A1_A0A1_0" sampledSeconds="3.1" nVehEntered="3" meanSpeed="4.50" meanOccupancy="22.50" maxJamLengthInVehicles="2" />
</detector>
"#;

    fn parse(text: &str, kind: DetectorKind) -> Vec<Result<Reading, ParseError>> {
        DetectorParser::new(text.as_bytes(), kind, 1_000_000).collect()
    }

    fn input(text: &'static str) -> Option<ReplayInput> {
        Some(Box::new(text.as_bytes()))
    }

    #[test]
    fn e1_rows_map_to_readings_and_no_vehicle_speed_becomes_zero() {
        let rows = parse(E1, DetectorKind::E1);
        assert_eq!(rows.len(), 3);
        let r0 = rows[0].as_ref().expect("valid");
        assert_eq!(
            r0,
            &Reading {
                sensor: "e1_A1_A0A1_0".into(),
                ts_ms: 1_005_000,
                count: 0.0,
                occupancy: 0.0,
                speed: 0.0,
                queue: 0.0
            }
        );
        let r1 = rows[1].as_ref().expect("valid");
        assert_eq!((r1.count, r1.occupancy, r1.speed), (2.0, 12.81, 7.80));
        assert_eq!(rows[2].as_ref().map(|r| r.ts_ms), Ok(1_010_000));
    }

    #[test]
    fn e2_rows_carry_entered_vehicles_and_the_jam_as_queue() {
        let rows = parse(E2, DetectorKind::E2);
        let r = rows[1].as_ref().expect("valid");
        assert_eq!(
            (r.count, r.occupancy, r.speed, r.queue, r.ts_ms),
            (3.0, 22.5, 4.5, 2.0, 1_010_000)
        );
        assert_eq!(rows[0].as_ref().map(|r| r.speed), Ok(0.0));
    }

    #[test]
    fn a_malformed_row_is_named_by_line_and_attribute_and_parsing_goes_on() {
        let text = "<detector>\n\
            <interval end=\"1\" id=\"a\" nVehContrib=\"x\" occupancy=\"0\" speed=\"3\"/>\n\
            <interval end=\"1\" id=\"b\" occupancy=\"0\" speed=\"3\"/>\n\
            <interval end=\"2\" id=\"c\" nVehContrib=\"2\" occupancy=\"0\" speed=\"-1.00\"/>\n\
            <interval end=\"-4\" id=\"d\" nVehContrib=\"0\" occupancy=\"0\" speed=\"3\"/>\n\
            <interval end=\"2\" id=\"e\" nVehContrib=\"0\" occupancy=\"0\" speed=\"3\" speed=\"4\"/>\n\
            <interval end=\"3\" id=\"f\" nVehContrib=\"1\" occupancy=\"4\" speed=\"3\"/>\n\
            </detector>\n";
        let rows = parse(text, DetectorKind::E1);
        assert_eq!(rows.len(), 6, "{rows:?}");
        let e = rows[0].as_ref().expect_err("not a number");
        assert_eq!(e.to_string(), "line 2: nVehContrib=\"x\" is not a number");
        assert_eq!((e.line(), e.kind()), (2, "invalid_attribute"));
        assert_eq!(
            rows[1],
            Err(ParseError::Missing {
                line: 3,
                attr: "nVehContrib"
            })
        );
        let e = rows[2].as_ref().expect_err("speed -1 with vehicles");
        assert!(
            matches!(
                e,
                ParseError::Invalid {
                    line: 4,
                    attr: "speed",
                    ..
                }
            ),
            "{e}"
        );
        assert!(matches!(
            rows[3],
            Err(ParseError::Invalid {
                line: 5,
                attr: "end",
                ..
            })
        ));
        assert!(
            matches!(rows[4], Err(ParseError::Xml { line: 6, .. })),
            "{:?}",
            rows[4]
        );
        assert_eq!(rows[5].as_ref().map(|r| r.sensor.as_str()), Ok("f"));
    }

    #[test]
    fn a_truncated_file_reports_its_last_element_and_keeps_the_rows_before() {
        let text = "<detector>\n<interval end=\"1\" id=\"a\" nVehContrib=\"0\" occupancy=\"0\" speed=\"-1\"/>\n<interval end=\"2\" id=\"a\" nVehCon";
        let rows = parse(text, DetectorKind::E1);
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert!(rows[0].is_ok());
        let e = rows[1].as_ref().expect_err("truncated");
        assert_eq!((e.kind(), e.line()), ("truncated", 3));
        // Cut inside an attribute value, and cut between rows before the root closes.
        let rows = parse("<detector>\n<interval end=\"1", DetectorKind::E1);
        assert_eq!(rows.iter().map(|r| r.is_err()).collect::<Vec<_>>(), [true]);
        let cut = text.find("\n<interval end=\"2\"").expect("second row") + 1;
        let rows = parse(&text[..cut], DetectorKind::E1);
        assert!(rows[0].is_ok(), "{rows:?}");
        assert_eq!(rows[1].as_ref().map_err(|e| e.kind()), Err("truncated"));
        // A comment that never closes.
        let rows = parse("<detector>\n<!-- SUMO", DetectorKind::E1);
        assert_eq!(rows.len(), 1);
        assert!(parse("", DetectorKind::E1).is_empty());
    }

    #[test]
    fn an_endless_element_is_refused_without_buffering_the_file() {
        let mut text = String::from("<detector>\n<interval id=\"");
        text.push_str(&"x".repeat(ELEMENT_BYTES_MAX + 100_000));
        let input = std::io::BufReader::new(text.as_bytes());
        let rows: Vec<_> = DetectorParser::new(input, DetectorKind::E1, 0).collect();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            rows[0].as_ref().map_err(|e| e.kind()),
            Err("element_too_large")
        );
    }

    #[test]
    fn replay_merges_the_files_in_time_order_and_filters_by_light() {
        let cfg = ReplayConfig {
            base_epoch_ms: 0,
            speed: 1.0,
            tls: ["A1".to_string()].into(),
        };
        let src = ReplaySource::new(input(E1), input(E2), cfg).expect("valid");
        let got: Vec<(String, i64)> = src
            .map(|r| r.map(|r| (r.sensor, r.ts_ms)).expect("valid"))
            .collect();
        assert_eq!(
            got,
            vec![
                ("e1_A1_A0A1_0".to_string(), 5_000),
                ("e2_A1_A0A1_0".to_string(), 5_000),
                ("e1_A1_A0A1_0".to_string(), 10_000),
                ("e2_A1_A0A1_0".to_string(), 10_000),
            ]
        );
    }

    #[test]
    fn replay_releases_rows_as_accelerated_time_passes() {
        let cfg = ReplayConfig {
            base_epoch_ms: 0,
            speed: 10.0,
            tls: BTreeSet::new(),
        };
        let mut src = ReplaySource::new(input(E1), input(E2), cfg).expect("valid");
        // The first poll is at the first row's time: the three rows ending at 5 s.
        let p = src.poll(100_000);
        assert_eq!(p.readings.len(), 3, "{p:?}");
        assert!(p.errors.is_empty());
        assert_eq!(src.replay_now_ms(100_000), Some(5_000));
        // 0.4 s of real time is 4 s of replay: nothing ends at 9 s.
        assert!(src.poll(100_400).readings.is_empty());
        assert!(!src.is_finished());
        // 0.5 s is 5 s: the rows ending at 10 s.
        let p = src.poll(100_500);
        assert_eq!(p.readings.len(), 2);
        assert!(src.poll(1_000_000).readings.is_empty());
        assert!(src.is_finished());
        assert!(matches!(
            ReplaySource::new(
                None,
                None,
                ReplayConfig {
                    speed: 0.0,
                    ..ReplayConfig::default()
                }
            ),
            Err(ReplayOpenError::Speed(_))
        ));
    }

    #[test]
    fn an_additional_file_declares_the_detectors() {
        let add = r#"<additional>
    <inductionLoop id="e1_A0_A1A0_0" lane="A1A0_0" pos="195.00" period="5" file="out/e1.xml"/>
    <laneAreaDetector id="e2_A0_A1A0_0" lane="A1A0_0" pos="120.00" length="80.00" period="5" file="out/e2.xml"/>
    <timedEvent type="SaveTLSSwitchStates" source="A0" dest="out/tls_states.xml"/>
</additional>
"#;
        assert_eq!(
            declared_detectors(add.as_bytes()),
            Ok(vec![
                ("e1_A0_A1A0_0".to_string(), DetectorKind::E1),
                ("e2_A0_A1A0_0".to_string(), DetectorKind::E2),
            ])
        );
        assert_eq!(
            declared_detectors("<additional>\n<inductionLoop lane=\"x\"/>".as_bytes()),
            Err(ParseError::Missing {
                line: 2,
                attr: "id"
            })
        );
    }

    #[test]
    fn a_poll_out_of_row_budget_waits_rather_than_break_time_order() {
        // E1's rows are all filtered out but one late row; E2's first row is early.
        let mut e1 = String::from("<detector>\n");
        for _ in 0..5 {
            e1.push_str("<interval end=\"1\" id=\"e1_Z9_a_0\" nVehContrib=\"0\" occupancy=\"0\" speed=\"-1\"/>\n");
        }
        e1.push_str("<interval end=\"9\" id=\"e1_A1_a_0\" nVehContrib=\"0\" occupancy=\"0\" speed=\"-1\"/>\n</detector>\n");
        let cfg = ReplayConfig {
            tls: ["A1".to_string()].into(),
            speed: 1000.0,
            ..ReplayConfig::default()
        };
        let mut src = ReplaySource::new(
            Some(Box::new(std::io::Cursor::new(e1.into_bytes()))),
            input(E2),
            cfg,
        )
        .expect("valid");
        let mut got = Vec::new();
        for t in 0..10 {
            got.extend(src.poll_bounded(t * 1_000, 100, 2).readings);
        }
        let ts: Vec<i64> = got.iter().map(|r| r.ts_ms).collect();
        assert_eq!(ts, vec![5_000, 9_000, 10_000]);
        assert_eq!(src.filtered(), 5);
        // At most the readings asked for.
        let mut src =
            ReplaySource::new(input(E1), input(E2), ReplayConfig::default()).expect("valid");
        assert_eq!(src.poll_bounded(i64::MAX / 4, 2, 100).readings.len(), 2);
    }

    #[test]
    fn the_watermark_never_passes_a_reading_still_to_come() {
        for (readings_max, rows_max) in [(1, 1), (1, 100), (2, 3), (100, 1), (100, 100)] {
            let mut src =
                ReplaySource::new(input(E1), input(E2), ReplayConfig::default()).expect("valid");
            let (mut through, mut n) = (None::<i64>, 0);
            for t in 0..2_000 {
                let polled = src.poll_bounded(t * 50, readings_max, rows_max);
                for r in &polled.readings {
                    assert!(
                        through.is_none_or(|w| r.ts_ms > w),
                        "budget {readings_max}/{rows_max}: reading at {} after watermark {through:?}",
                        r.ts_ms
                    );
                }
                n += polled.readings.len();
                assert!(
                    polled.through_ms >= through,
                    "the watermark never goes back"
                );
                through = polled.through_ms;
            }
            assert!(
                n > 0 && src.is_finished(),
                "budget {readings_max}/{rows_max}"
            );
        }
    }

    #[test]
    fn replay_reports_row_errors_with_their_file() {
        let bad = "<detector>\n<interval end=\"5\" id=\"e2_A1_x_0\"/>\n</detector>\n";
        let mut src = ReplaySource::new(
            input(E1),
            Some(Box::new(bad.as_bytes())),
            ReplayConfig::default(),
        )
        .expect("valid");
        let p = src.poll(0);
        assert_eq!(p.errors.len(), 1);
        assert_eq!(
            p.errors[0].to_string(),
            "e2 file, line 2: <interval> has no `nVehEntered` attribute"
        );
        assert_eq!(p.errors[0].kind(), "missing_attribute");
        assert_eq!(src.errors(), 1);
    }
}
