//! The agent's event log: NDJSON lines to standard output, or to a file
//! rotated by size (`events.ndjson` becomes `events.ndjson.1`, that one
//! `.2`, up to `keep` files; the oldest goes). Lines are written whole, so
//! a shipper (Vector, Fluent Bit, Promtail) following the file by name
//! never reads half a line. A line that cannot be written is counted, not
//! retried.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub struct EventLog {
    sink: Sink,
    /// Lines that could not be written (disk full, stdout closed).
    pub lost: u64,
}

enum Sink {
    Stdout,
    File { path: PathBuf, file: File, written: u64, max_bytes: u64, keep: u32 },
}

fn open(path: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new().create(true).append(true).mode(0o640).open(path).with_context(|| {
        format!("cannot open the event log {}: check the directory and its permissions", path.display())
    })
}

impl EventLog {
    pub fn stdout() -> Self {
        EventLog { sink: Sink::Stdout, lost: 0 }
    }

    /// Appends to `path` (made if needed); rotates once it would pass
    /// `max_bytes`, keeping `keep` old files.
    pub fn file(path: &Path, max_bytes: u64, keep: u32) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let file = open(path)?;
        let written = file.metadata().map_or(0, |m| m.len());
        Ok(EventLog {
            sink: Sink::File { path: path.to_path_buf(), file, written, max_bytes, keep },
            lost: 0,
        })
    }

    /// Writes lines (each without its newline).
    pub fn write(&mut self, lines: &[String]) {
        match &mut self.sink {
            Sink::Stdout => {
                for l in lines {
                    if !crate::output::print_line(l) {
                        self.lost += 1;
                    }
                }
            }
            Sink::File { path, file, written, max_bytes, keep } => {
                for l in lines {
                    let len = l.len() as u64 + 1;
                    if *written > 0 && *written + len > *max_bytes {
                        match rotate(path, *keep) {
                            Ok(f) => {
                                *file = f;
                                *written = 0;
                            }
                            Err(_) => {
                                self.lost += 1;
                                continue;
                            }
                        }
                    }
                    let mut buf = Vec::with_capacity(l.len() + 1);
                    buf.extend_from_slice(l.as_bytes());
                    buf.push(b'\n');
                    match file.write_all(&buf) {
                        Ok(()) => *written += len,
                        Err(_) => self.lost += 1,
                    }
                }
            }
        }
    }
}

/// `path.(keep-1)` → `path.keep`, ..., `path` → `path.1`; a new `path`.
fn rotate(path: &Path, keep: u32) -> Result<File> {
    let numbered = |n: u32| PathBuf::from(format!("{}.{n}", path.display()));
    if keep == 0 {
        let _ = std::fs::remove_file(path);
    } else {
        let _ = std::fs::remove_file(numbered(keep));
        for n in (1..keep).rev() {
            let _ = std::fs::rename(numbered(n), numbered(n + 1));
        }
        std::fs::rename(path, numbered(1)).with_context(|| format!("rotating {}", path.display()))?;
    }
    open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_rotate_by_size_and_keep_whole_lines() {
        let dir = std::env::temp_dir().join(format!("tcpscope-log-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("events.ndjson");
        let mut log = EventLog::file(&path, 100, 2).unwrap();
        let lines: Vec<String> =
            (0..20).map(|i| format!("{{\"n\":{i:03},\"pad\":\"xxxxxxxxxxxxxxxxxxxxx\"}}")).collect();
        log.write(&lines); // 36 bytes each: two per file
        assert_eq!(log.lost, 0);
        let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();
        let now = read(path.clone());
        assert!(now.len() <= 100 && now.ends_with('\n'));
        assert_eq!(now.lines().map(|l| &l[5..8]).collect::<Vec<_>>(), ["018", "019"]);
        assert_eq!(read(dir.join("events.ndjson.1")).lines().count(), 2);
        assert!(read(dir.join("events.ndjson.2")).starts_with("{\"n\":014"));
        assert!(!dir.join("events.ndjson.3").exists(), "only `keep` old files");
        // A new log goes on appending to the file that is there.
        let mut again = EventLog::file(&path, 100, 2).unwrap();
        again.write(&lines[..1]);
        assert!(read(dir.join("events.ndjson.1")).contains("\"n\":018"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
