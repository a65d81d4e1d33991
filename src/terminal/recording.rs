//! What a pane keeps of its output: an asciicast v2 recording for the store,
//! and the recent output replayed when a client reconnects.

use std::collections::VecDeque;
use std::time::Duration;

use serde_json::json;

/// Builds a session's asciicast v2 text: a header line, then one JSON array
/// per event (`[seconds, "o" | "i" | "r", data]`), up to a byte cap.
pub struct Recorder {
    /// Lines not yet handed to the store.
    pending: Vec<u8>,
    /// An incomplete UTF-8 character at the end of the last output (asciicast data is text).
    carry: Vec<u8>,
    written: u64,
    cap: u64,
    truncated: bool,
    record_input: bool,
}

impl Recorder {
    /// Starts a recording with its header: terminal size, start time, title.
    pub fn new(
        cols: u16,
        rows: u16,
        started_unix_secs: i64,
        title: &str,
        cap: u64,
        record_input: bool,
    ) -> Recorder {
        let header = json!({
            "version": 2,
            "width": cols,
            "height": rows,
            "timestamp": started_unix_secs,
            "title": title,
            "env": { "TERM": "xterm-256color" },
        });
        let mut pending = serde_json::to_vec(&header).expect("a JSON value serialises");
        pending.push(b'\n');
        Recorder {
            written: pending.len() as u64,
            pending,
            carry: Vec::new(),
            cap,
            truncated: false,
            record_input,
        }
    }

    pub fn output(&mut self, at: Duration, data: &[u8]) {
        let mut bytes = std::mem::take(&mut self.carry);
        bytes.extend_from_slice(data);
        // Hold back an incomplete character at the end (at most 3 bytes) for the next chunk.
        if let Err(error) = std::str::from_utf8(&bytes)
            && error.error_len().is_none()
            && bytes.len() - error.valid_up_to() <= 3
        {
            self.carry = bytes.split_off(error.valid_up_to());
        }
        if !bytes.is_empty() {
            self.event(at, "o", &String::from_utf8_lossy(&bytes));
        }
    }

    /// Keystrokes, kept only when input recording is on.
    pub fn input(&mut self, at: Duration, data: &[u8]) {
        if self.record_input {
            self.event(at, "i", &String::from_utf8_lossy(data));
        }
    }

    pub fn resize(&mut self, at: Duration, cols: u16, rows: u16) {
        self.event(at, "r", &format!("{cols}x{rows}"));
    }

    fn event(&mut self, at: Duration, code: &str, data: &str) {
        if self.truncated {
            return;
        }
        // Microsecond precision, as asciinema writes it.
        let seconds = at.as_micros() as f64 / 1e6;
        let mut line =
            serde_json::to_vec(&json!([seconds, code, data])).expect("a JSON value serialises");
        line.push(b'\n');
        if self.written + line.len() as u64 > self.cap {
            self.truncated = true;
            return;
        }
        self.written += line.len() as u64;
        self.pending.extend_from_slice(&line);
    }

    /// Bytes waiting to be stored.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Hands over the lines not yet stored, and whether the cap was reached.
    pub fn take(&mut self) -> (Vec<u8>, bool) {
        (std::mem::take(&mut self.pending), self.truncated)
    }
}

/// The most recent output of a pane, at most `capacity` bytes.
pub struct Scrollback {
    bytes: VecDeque<u8>,
    capacity: usize,
    /// Older output was dropped: the front may start mid-line.
    wrapped: bool,
}

impl Scrollback {
    pub fn new(capacity: usize) -> Scrollback {
        Scrollback {
            bytes: VecDeque::with_capacity(capacity.min(64 << 10)),
            capacity,
            wrapped: false,
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        let data = &data[data.len().saturating_sub(self.capacity)..];
        let overflow = (self.bytes.len() + data.len()).saturating_sub(self.capacity);
        if overflow > 0 {
            self.bytes.drain(..overflow);
            self.wrapped = true;
        }
        self.bytes.extend(data);
    }

    /// What to replay: after a wrap, from the first full line on (a cut
    /// escape sequence or character would garble the redrawn screen).
    pub fn replay(&self) -> Vec<u8> {
        let skip = if self.wrapped {
            self.bytes
                .iter()
                .position(|b| *b == b'\n')
                .map_or(0, |newline| newline + 1)
        } else {
            0
        };
        self.bytes.iter().skip(skip).copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(recorder: &mut Recorder) -> Vec<serde_json::Value> {
        let (bytes, _) = recorder.take();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    #[test]
    fn a_recording_is_a_header_and_timed_events() {
        let mut recorder = Recorder::new(120, 40, 1_700_000_000, "web1", 1 << 20, false);
        recorder.output(Duration::from_millis(1500), b"hello\r\n");
        recorder.resize(Duration::from_secs(2), 100, 30);
        recorder.input(Duration::from_secs(3), b"secret\r");
        let lines = lines(&mut recorder);
        assert_eq!(lines[0]["version"], 2);
        assert_eq!(lines[0]["width"], 120);
        assert_eq!(lines[0]["height"], 40);
        assert_eq!(lines[1], json!([1.5, "o", "hello\r\n"]));
        assert_eq!(lines[2], json!([2.0, "r", "100x30"]));
        // Input is not recorded unless asked for.
        assert_eq!(lines.len(), 3);
    }

    #[test]
    fn a_character_split_across_chunks_is_recorded_whole() {
        let mut recorder = Recorder::new(80, 24, 0, "t", 1 << 20, true);
        let euro = "€".as_bytes();
        recorder.output(Duration::ZERO, &[b'a', euro[0]]);
        recorder.output(Duration::ZERO, &euro[1..]);
        recorder.input(Duration::ZERO, b"ls\r");
        let lines = lines(&mut recorder);
        assert_eq!(lines[1][2], "a");
        assert_eq!(lines[2][2], "€");
        assert_eq!(lines[3], json!([0.0, "i", "ls\r"]));
    }

    #[test]
    fn the_recording_stops_at_its_cap_and_says_so() {
        let mut recorder = Recorder::new(80, 24, 0, "t", 200, false);
        for _ in 0..20 {
            recorder.output(Duration::ZERO, b"0123456789");
        }
        let (bytes, truncated) = recorder.take();
        assert!(truncated);
        assert!(bytes.len() <= 200, "{}", bytes.len());
    }

    #[test]
    fn scrollback_keeps_the_newest_bytes_and_replays_whole_lines() {
        let mut scrollback = Scrollback::new(10);
        scrollback.push(b"abc\n");
        assert_eq!(scrollback.replay(), b"abc\n");
        scrollback.push(b"defg\nhij");
        // "abc\ndefg\nhij" is 12 bytes: "ab" dropped, then the cut line "c\n".
        assert_eq!(scrollback.replay(), b"defg\nhij");
        scrollback.push(&[b'x'; 25]);
        assert_eq!(scrollback.replay(), vec![b'x'; 10]);
    }
}
