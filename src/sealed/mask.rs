//! Output masking: every occurrence of a secret's value — as printed, in
//! base64 (at any alignment within a longer encoding) and URL-encoded — is
//! replaced by `***` before output reaches the store, a stream or a log.
//!
//! A [`Masker`] reads a stream in whatever pieces it arrives in and writes the
//! same text for every way of cutting it: it holds back only the end of a
//! piece that could begin a value (never more than the longest pattern), and
//! remembers a masked run that the cut went through.

use std::sync::Arc;

use base64::Engine as _;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};
use zeroize::Zeroizing;

/// What stands for a masked run of output.
pub const MASKED: &[u8] = b"***";

/// Shifted base64 patterns shorter than this are not looked for: a few
/// letters would mask ordinary words, and reveal little of the value.
const MIN_SHIFTED: usize = 6;

/// RFC 3986's unreserved characters are left as they are by URL encoders.
const URL_ENCODED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The byte strings to mask: secret values and their encodings. Wiped when dropped.
#[derive(Default)]
pub struct Mask {
    patterns: Vec<Zeroizing<Vec<u8>>>,
}

impl Mask {
    /// The mask of `values`: each as it is, base64-encoded (standard and
    /// URL-safe, at each of the three alignments it can have inside a longer
    /// encoding) and URL-encoded (`%20` and form `+`).
    pub fn of<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Mask {
        let mut mask = Mask::default();
        for value in values.into_iter().filter(|v| !v.is_empty()) {
            mask.add(value.to_vec());
            for engine in [
                base64::engine::general_purpose::STANDARD_NO_PAD,
                base64::engine::general_purpose::URL_SAFE_NO_PAD,
            ] {
                for shift in 0..3 {
                    mask.add_shifted_base64(&engine, value, shift);
                }
            }
            if let Ok(text) = std::str::from_utf8(value) {
                let encoded = percent_encoding::utf8_percent_encode(text, URL_ENCODED).to_string();
                mask.add(encoded.replace("%20", "+").into_bytes());
                mask.add(encoded.into_bytes());
            }
        }
        mask
    }

    /// `value` encoded after `shift` other bytes: only the characters that
    /// depend on the value alone (the first ones mix in what precedes, the
    /// last partial one what follows).
    fn add_shifted_base64(
        &mut self,
        engine: &base64::engine::GeneralPurpose,
        value: &[u8],
        shift: usize,
    ) {
        let mut shifted = Zeroizing::new(vec![0u8; shift + value.len()]);
        shifted[shift..].copy_from_slice(value);
        let encoded = Zeroizing::new(engine.encode(&*shifted));
        // Characters before the value's first bit, whole or mixed: ⌈8·shift/6⌉.
        let skip = (8 * shift).div_ceil(6);
        // Characters that end before the value does: ⌊8·(shift+len)/6⌋.
        let whole = 8 * (shift + value.len()) / 6;
        if whole <= skip {
            return;
        }
        let middle = &encoded.as_bytes()[skip..whole];
        if shift == 0 || middle.len() >= MIN_SHIFTED {
            self.add(middle.to_vec());
        }
    }

    fn add(&mut self, pattern: Vec<u8>) {
        if !pattern.is_empty() && !self.patterns.iter().any(|p| **p == pattern) {
            self.patterns.push(Zeroizing::new(pattern));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    fn longest(&self) -> usize {
        self.patterns.iter().map(|p| p.len()).max().unwrap_or(0)
    }
}

/// One stream's masking: feed it what arrives, then [`Masker::finish`].
pub struct Masker {
    mask: Arc<Mask>,
    /// The end of the stream so far that could begin a pattern: not yet written.
    carry: Zeroizing<Vec<u8>>,
    /// How many of `carry`'s first bytes belong to a masked run already written as `***`.
    announced: usize,
}

impl Masker {
    pub fn new(mask: Arc<Mask>) -> Masker {
        Masker {
            mask,
            carry: Zeroizing::new(Vec::new()),
            announced: 0,
        }
    }

    /// What of the stream so far can be written, masked.
    pub fn push(&mut self, data: &[u8]) -> Vec<u8> {
        self.step(data, false)
    }

    /// The rest of the stream, masked.
    pub fn finish(&mut self) -> Vec<u8> {
        self.step(&[], true)
    }

    fn step(&mut self, data: &[u8], last: bool) -> Vec<u8> {
        let mut buffer = Zeroizing::new(Vec::with_capacity(self.carry.len() + data.len()));
        buffer.extend_from_slice(&self.carry);
        buffer.extend_from_slice(data);
        let hold = match last {
            true => buffer.len(),
            false => self.hold_from(&buffer),
        };
        // Masked runs: what the last piece announced, and every occurrence.
        let mut occurrences: Vec<(usize, usize)> = Vec::new();
        if self.announced > 0 {
            occurrences.push((0, self.announced));
        }
        for pattern in &self.mask.patterns {
            let found = memchr::memmem::find_iter(&buffer, &pattern[..]);
            occurrences.extend(found.map(|start| (start, start + pattern.len())));
        }
        occurrences.sort_unstable();
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for (start, end) in occurrences {
            match runs.last_mut() {
                Some(run) if start < run.1 => run.1 = run.1.max(end),
                _ => runs.push((start, end)),
            }
        }
        let mut written = Vec::with_capacity(hold + MASKED.len());
        let mut at = 0;
        // A run going on from the last piece was written as `***` then.
        let going_on = std::mem::take(&mut self.announced) > 0;
        for (start, end) in runs.into_iter().take_while(|(start, _)| *start < hold) {
            written.extend_from_slice(&buffer[at..start]);
            if !(going_on && start == 0) {
                written.extend_from_slice(MASKED);
            }
            at = end.min(hold);
            if end > hold {
                self.announced = end - hold;
            }
        }
        written.extend_from_slice(&buffer[at..hold]);
        self.carry = Zeroizing::new(buffer[hold..].to_vec());
        written
    }

    /// Where the longest end of `buffer` that is a proper beginning of some
    /// pattern starts (`buffer.len()` when none): what must wait for more.
    fn hold_from(&self, buffer: &[u8]) -> usize {
        let longest = self.mask.longest();
        let first = buffer.len().saturating_sub(longest.saturating_sub(1));
        (first..buffer.len())
            .find(|&start| {
                let tail = &buffer[start..];
                (self.mask.patterns.iter()).any(|p| p.len() > tail.len() && p.starts_with(tail))
            })
            .unwrap_or(buffer.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(mask: &Arc<Mask>, pieces: &[&[u8]]) -> Vec<u8> {
        let mut masker = Masker::new(mask.clone());
        let mut out = Vec::new();
        for piece in pieces {
            out.extend(masker.push(piece));
        }
        out.extend(masker.finish());
        out
    }

    fn b64(value: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(value)
    }

    #[test]
    fn a_value_and_its_encodings_are_masked_however_the_output_is_cut() {
        let secret: &[u8] = b"s3cr3t p@ss/w+rd";
        let mask = Arc::new(Mask::of([secret]));
        let text = format!(
            "start {} | b64 {} | basic {} | url {} | form {} | twice {}{} | overlap s3cr3t s3cr3t p@ss/w+rd end",
            String::from_utf8_lossy(secret),
            b64(secret),
            b64(b"admin:s3cr3t p@ss/w+rd"),
            "s3cr3t%20p%40ss%2Fw%2Brd",
            "s3cr3t+p%40ss%2Fw%2Brd",
            String::from_utf8_lossy(secret),
            String::from_utf8_lossy(secret),
        );
        let whole = masked(&mask, &[text.as_bytes()]);
        let whole_text = String::from_utf8(whole.clone()).unwrap();
        for leak in [
            String::from_utf8_lossy(secret).into_owned(),
            b64(secret).trim_end_matches('=').to_owned(),
            "s3cr3t%20p%40ss".to_owned(),
            "p%40ss%2Fw%2Brd".to_owned(),
        ] {
            assert!(!whole_text.contains(&leak), "{leak:?} in {whole_text}");
        }
        // The encoding's last partial character depends on what follows the value: kept.
        let expected_start =
            "start *** | b64 ***A== | basic YWRtaW46***A== | url *** | form *** | twice ****** |";
        assert!(whole_text.starts_with(expected_start), "{whole_text}");
        assert!(
            whole_text.ends_with("| overlap s3cr3t *** end"),
            "{whole_text}"
        );
        // Cut at every byte into two pieces, and into single bytes: the same text.
        let bytes = text.as_bytes();
        for cut in 0..=bytes.len() {
            assert_eq!(
                masked(&mask, &[&bytes[..cut], &bytes[cut..]]),
                whole,
                "cut at {cut}"
            );
        }
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(masked(&mask, &singles), whole);
    }

    #[test]
    fn only_what_could_begin_a_value_is_held_back() {
        let mask = Arc::new(Mask::of([&b"hunter2"[..]]));
        let mut masker = Masker::new(mask);
        assert_eq!(masker.push(b"progress: 50%"), b"progress: 50%");
        assert_eq!(masker.push(b" hun"), b" ");
        assert_eq!(masker.push(b"ter2 and hunt"), b"*** and ");
        assert_eq!(masker.push(b"ing"), b"hunting");
        assert_eq!(masker.push(b" hunte"), b" ");
        assert_eq!(masker.finish(), b"hunte");
    }

    #[test]
    fn nothing_to_mask_passes_output_through() {
        let mask = Arc::new(Mask::of([]));
        assert!(mask.is_empty());
        assert_eq!(masked(&mask, &[b"a", b"bc"]), b"abc");
    }
}
