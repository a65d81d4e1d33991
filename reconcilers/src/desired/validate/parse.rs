//! Reading one YAML file within its budgets: typed, every problem at its
//! place, and what a broken entry or field leaves readable.

use super::*;

/// serde-saphyr's limits for one file, within [`MAX_YAML_FILE_BYTES`].
pub(super) fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_documents: 1,
            max_depth: 32,
            max_nodes: 500_000,
            max_events: 2_000_000,
            max_total_scalar_bytes: MAX_YAML_FILE_BYTES,
            max_anchors: 1_000,
            max_aliases: 1_000,
            max_recorded_anchor_bytes: 1 << 20,
            max_recorded_anchor_events: 50_000,
            max_merge_keys: 1_000,
        },
    }
}

/// A file as read: whole, or only its good entries (the broken ones reported).
pub(super) struct Read<T> {
    pub(super) value: T,
    pub(super) whole: bool,
}

/// Parses one YAML file; a syntax or schema error becomes a problem at its
/// location. For a file that is one list (`list`: its key), every broken
/// entry is reported, not only the first, and the rest is still read, so
/// its later checks report their problems too.
pub(super) fn parse<T: DeserializeOwned>(
    files: &RepoFiles,
    path: &str,
    list: Option<&str>,
    problems: &mut Vec<Problem>,
) -> Option<Read<T>> {
    let bytes = files.get(path)?;
    let mut report = Report {
        file: path,
        problems,
    };
    let Ok(text) = std::str::from_utf8(bytes) else {
        report.at_start("not valid UTF-8");
        return None;
    };
    if text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        report.at_start("the file is empty");
        return None;
    }
    if bytes.len() > MAX_YAML_FILE_BYTES {
        report.at_start(format!(
            "the file is {} bytes; a config file may have at most {MAX_YAML_FILE_BYTES}",
            bytes.len()
        ));
        return None;
    }
    let error = match serde_saphyr::from_str_with_options::<T>(text, yaml_options()) {
        Ok(value) => return Some(Read { value, whole: true }),
        Err(error) => error,
    };
    let first = yaml_problem(path, 0, &error);
    let cut = match list {
        Some(key) => entries::<T>(path, text, key),
        None => fields::<T>(path, text),
    };
    let Some(Entries { mut broken, rest }) = cut else {
        problems.push(first);
        return None;
    };
    if !broken.contains(&first) {
        broken.push(first);
    }
    problems.extend(broken);
    // The good entries, at their own lines: later problems point at the file.
    serde_saphyr::from_str_with_options::<T>(&rest, yaml_options())
        .ok()
        .map(|value| Read {
            value,
            whole: false,
        })
}

/// A YAML error as a problem, `offset` lines further down the file.
pub(crate) fn yaml_problem(path: &str, offset: u64, error: &serde_saphyr::Error) -> Problem {
    let (line, column) = error.location().map_or((1, 1), |l| (l.line(), l.column()));
    let rendered = error.without_snippet().to_string();
    // The crate appends the location to its message; we print it in front.
    let suffix = format!(" at line {line}, column {column}");
    let message = rendered
        .strip_suffix(&suffix)
        .unwrap_or(&rendered)
        .to_owned();
    Problem {
        file: path.to_owned(),
        line: line + offset,
        column,
        message,
    }
}

/// A list file taken entry by entry.
pub(super) struct Entries {
    /// The problem of each entry that does not parse.
    pub(super) broken: Vec<Problem>,
    /// The file with the broken entries' lines emptied: the same line numbers.
    pub(super) rest: String,
}

/// Parses each entry of a file that is one block list under `key` on its
/// own (its lines under a `key:` line, so columns and messages are the
/// file's). None when the file cannot be cut that way: it is not one list,
/// the list is in flow style, or it has anchors (an alias may refer to
/// another entry).
pub(super) fn entries<T: DeserializeOwned>(path: &str, text: &str, key: &str) -> Option<Entries> {
    let mut options = yaml_options();
    if let Some(budget) = options.budget.as_mut() {
        budget.max_anchors = 0;
    }
    let outline: BTreeMap<String, Vec<Spanned<serde::de::IgnoredAny>>> =
        serde_saphyr::from_str_with_options(text, options).ok()?;
    let [(only, entries)] = <[_; 1]>::try_from(outline.into_iter().collect::<Vec<_>>()).ok()?;
    let starts: Vec<usize> = entries
        .iter()
        .map(|entry| usize::try_from(entry.referenced.line()).unwrap_or(usize::MAX))
        .collect();
    let mut lines: Vec<&str> = text.lines().collect();
    // Block style: each entry starts at its own `-`, below the one before.
    let dashed = |start: &usize| {
        *start >= 2
            && lines
                .get(start - 1)
                .is_some_and(|line| line.trim_start().starts_with('-'))
    };
    if only != key || !starts.iter().all(dashed) || !starts.is_sorted_by(|a, b| a < b) {
        return None;
    }
    let mut broken = Vec::new();
    for (i, start) in starts.iter().enumerate() {
        let end = starts.get(i + 1).map_or(lines.len(), |next| next - 1);
        let alone = format!("{key}:\n{}\n", lines[start - 1..end].join("\n"));
        if let Err(error) = serde_saphyr::from_str_with_options::<T>(&alone, yaml_options()) {
            // Line 1 of `alone` is the key; line 2 is the entry's first.
            broken.push(yaml_problem(path, *start as u64 - 2, &error));
            lines[start - 1..end].fill("");
        }
    }
    Some(Entries {
        broken,
        rest: lines.join("\n"),
    })
}

/// Parses a file that is one mapping (a run-request, a state) again and
/// again, each time without the top-level key whose lines the last error
/// was in, so that every broken field is reported at once — not one per
/// commit. Stops at an error no single key holds (or a required key gone:
/// its own error is reported already). None when the first error is not
/// within a top-level key.
pub(super) fn fields<T: DeserializeOwned>(path: &str, text: &str) -> Option<Entries> {
    // A file is parsed at most this often: a state has a dozen fields, and a
    // file of thousands of unknown keys must not be parsed thousands of times.
    const MOST_PARSES: usize = 32;
    let mut lines: Vec<&str> = text.lines().collect();
    // Each top-level key's lines: from its line to the next top-level key.
    let starts: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, line)| {
            line.starts_with(|c: char| !c.is_whitespace() && c != '#' && c != '-')
                && line.contains(':')
        })
        .map(|(index, _)| index)
        .collect();
    let blocks: Vec<(usize, usize, String)> = starts
        .iter()
        .enumerate()
        .map(|(at, start)| {
            let end = starts.get(at + 1).copied().unwrap_or(lines.len());
            let key = lines[*start].split(':').next().unwrap_or_default().trim();
            (*start, end, key.to_owned())
        })
        .collect();
    // The block holding 1-based `line`.
    let block_of = |line: usize| {
        blocks
            .iter()
            .find(|(start, end, _)| (start + 1..=*end).contains(&line))
            .cloned()
    };
    let mut broken: Vec<Problem> = Vec::new();
    let mut removed: Vec<String> = Vec::new();
    for _ in 0..=blocks.len().min(MOST_PARSES) {
        let Err(error) =
            serde_saphyr::from_str_with_options::<T>(&lines.join("\n"), yaml_options())
        else {
            break;
        };
        let problem = yaml_problem(path, 0, &error);
        if removed
            .iter()
            .any(|key| problem.message.contains(&format!("missing field `{key}`")))
        {
            break;
        }
        let Some((start, end, key)) = block_of(usize::try_from(problem.line).unwrap_or(0)) else {
            break;
        };
        if removed.contains(&key) {
            break;
        }
        broken.push(problem);
        lines[start..end].fill("");
        removed.push(key);
    }
    (!broken.is_empty()).then(|| Entries {
        broken,
        rest: lines.join("\n"),
    })
}
