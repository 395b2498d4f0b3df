//! Log lines off the request path: a handler only copies its formatted line
//! into a buffer; a thread of its own writes whatever has gathered to
//! stderr in one write. When stderr's reader falls so far behind that the
//! buffer holds [`BUFFER_LIMIT`] bytes, further lines are dropped, counted,
//! and the count is written as a line of its own once there is room: the
//! writer never blocks a handler and never drops a line without saying so.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};

use tracing_subscriber::fmt::MakeWriter;

/// Bytes of log lines waiting for stderr before new lines are dropped.
pub const BUFFER_LIMIT: usize = 4 << 20;

/// How long the writing thread lets lines gather after a write before it
/// looks again; a line waits at most about this long (plus the write).
const LINGER: std::time::Duration = std::time::Duration::from_millis(2);

/// The process's log writer, once logging is set up.
static INSTALLED: OnceLock<LogWriter> = OnceLock::new();

/// What the handlers and the writing thread share.
#[derive(Debug, Default)]
struct Queue {
    /// Lines not yet written.
    bytes: Vec<u8>,
    /// Lines dropped since the last count was written.
    dropped: u64,
    /// Whether the writing thread is writing a batch now.
    writing: bool,
    /// Whether the writing thread waits for lines: only then does a new
    /// line wake it, so a busy daemon pays no wake-up (a system call) per line.
    idle: bool,
}

#[derive(Debug)]
struct Shared {
    queue: Mutex<Queue>,
    /// Wakes the writing thread (lines came) and [`LogWriter::flush`] (a batch went).
    changed: Condvar,
    limit: usize,
    json: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A handle on the buffer; cheap to clone.
#[derive(Debug, Clone)]
pub struct LogWriter {
    shared: Arc<Shared>,
}

impl LogWriter {
    /// A writer to `sink` on a thread of its own, holding at most `limit`
    /// bytes; the count of dropped lines is written as a JSON line when `json`.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn spawn(sink: impl Write + Send + 'static, limit: usize, json: bool) -> std::io::Result<Self> {
        let shared = Arc::new(Shared { queue: Mutex::default(), changed: Condvar::new(), limit, json });
        let thread_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("berth-log".to_owned())
            .spawn(move || write_out(&thread_shared, sink))?;
        Ok(Self { shared })
    }

    /// Takes one formatted line (or several): into the buffer, or counted as dropped.
    fn push(&self, line: &[u8]) {
        let mut queue = self.shared.lock();
        if queue.bytes.len() + line.len() > self.shared.limit {
            queue.dropped += 1;
        } else {
            queue.bytes.extend_from_slice(line);
        }
        let idle = queue.idle;
        drop(queue);
        if idle {
            self.shared.changed.notify_all();
        }
    }

    /// Waits until every line taken so far is written (at exit).
    pub fn flush(&self) {
        let mut queue = self.shared.lock();
        while !queue.bytes.is_empty() || queue.dropped > 0 || queue.writing {
            let (next, _) = self
                .shared
                .changed
                .wait_timeout(queue, std::time::Duration::from_millis(50))
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            queue = next;
        }
    }
}

/// The writing thread: takes what has gathered, writes it in one go.
fn write_out(shared: &Shared, mut sink: impl Write) {
    let mut batch = Vec::new();
    loop {
        let dropped = {
            let mut queue = shared.lock();
            queue.writing = false;
            shared.changed.notify_all();
            while queue.bytes.is_empty() && queue.dropped == 0 {
                queue.idle = true;
                queue = shared.changed.wait(queue).unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            queue.idle = false;
            std::mem::swap(&mut queue.bytes, &mut batch);
            queue.writing = true;
            std::mem::take(&mut queue.dropped)
        };
        if dropped > 0 {
            let note = format!(
                "{dropped} log lines were dropped: stderr's reader fell behind by {} bytes",
                shared.limit
            );
            let line = if shared.json {
                let note = serde_json::json!({"level": "WARN", "target": "api::log_writer", "fields": {"message": note, "dropped": dropped}});
                format!("{note}\n")
            } else {
                format!("WARN api::log_writer: {note}\n")
            };
            batch.extend_from_slice(line.as_bytes());
        }
        // A failed write (stderr closed) leaves nothing to do but go on.
        let _ = sink.write_all(&batch).and_then(|()| sink.flush());
        batch.clear();
        // Lines that come in the next moment gather without waking this
        // thread: at most one wake-up per LINGER, however many lines come.
        std::thread::sleep(LINGER);
    }
}

/// Writes one event's line into the buffer when dropped by the subscriber.
#[derive(Debug)]
pub struct LineWriter {
    writer: LogWriter,
    line: Vec<u8>,
}

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.writer.push(&self.line);
        }
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter { writer: self.clone(), line: Vec::new() }
    }
}

/// Makes `writer` the one [`flush_installed`] waits for.
pub fn install(writer: LogWriter) {
    let _ = INSTALLED.set(writer);
}

/// Waits until the installed writer has written every line (before exit).
pub fn flush_installed() {
    if let Some(writer) = INSTALLED.get() {
        writer.flush();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use super::*;

    /// A sink that says when a write starts and lets it finish only when told to.
    struct Gate {
        entered: mpsc::Sender<()>,
        open: mpsc::Receiver<()>,
        out: mpsc::Sender<Vec<u8>>,
    }

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _ = self.entered.send(());
            self.open.recv().map_err(|_| std::io::ErrorKind::BrokenPipe)?;
            self.out.send(buf.to_vec()).map_err(|_| std::io::ErrorKind::BrokenPipe)?;
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A sink that keeps everything.
    struct Keep(Arc<Mutex<Vec<u8>>>);

    impl Write for Keep {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_reader_never_blocks_a_line_and_the_dropped_are_counted_in_the_log() {
        let (entered_tx, entered) = mpsc::channel();
        let (open, open_rx) = mpsc::channel();
        let (out, written) = mpsc::channel();
        let writer = LogWriter::spawn(Gate { entered: entered_tx, open: open_rx, out }, 100, false).unwrap();
        // The first line goes to the sink, which holds it: the reader is stalled.
        writer.push(b"first\n");
        entered.recv_timeout(Duration::from_secs(5)).unwrap();
        let started = Instant::now();
        for n in 0..1000 {
            writer.push(format!("line {n:04}\n").as_bytes());
        }
        assert!(started.elapsed() < Duration::from_secs(1), "pushing lines never waits for the reader");
        let mut text = String::new();
        while !text.contains("dropped") {
            open.send(()).unwrap();
            let write = written.recv_timeout(Duration::from_secs(5)).expect("the writer goes on");
            text.push_str(&String::from_utf8(write).unwrap());
        }
        // 100 bytes hold ten 10-byte lines; the rest are counted, not lost silently.
        let kept: Vec<&str> = text.lines().filter(|line| line.starts_with("line")).collect();
        assert_eq!(kept, (0..10).map(|n| format!("line {n:04}")).collect::<Vec<_>>());
        assert!(text.starts_with("first\n"), "{text}");
        assert!(text.contains("990 log lines were dropped"), "{text}");
        // Lines after the stall are written again.
        writer.push(b"after\n");
        open.send(()).unwrap();
        assert_eq!(written.recv_timeout(Duration::from_secs(5)).unwrap(), b"after\n");
    }

    #[test]
    fn flush_waits_until_every_line_is_written_and_lines_keep_their_order() {
        let kept = Arc::new(Mutex::new(Vec::new()));
        let writer = LogWriter::spawn(Keep(Arc::clone(&kept)), BUFFER_LIMIT, true).unwrap();
        for n in 0..500 {
            writer.push(format!("{n}\n").as_bytes());
        }
        writer.flush();
        let text = String::from_utf8(kept.lock().unwrap().clone()).unwrap();
        let numbers: Vec<usize> = text.lines().map(|line| line.parse().unwrap()).collect();
        assert_eq!(numbers, (0..500).collect::<Vec<_>>());
    }
}
