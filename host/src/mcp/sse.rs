//! Server-sent events, as the Streamable HTTP transport carries JSON-RPC
//! messages in them: an incremental, bounded reader of events from the
//! upstream's chunks, and the writer of an event with a new `data`.

/// One event: its lines as received (without `data` ones) and its data.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// Every line that is not a `data:` line (`id:`, `event:`, `retry:`,
    /// comments), in order.
    pub other: Vec<String>,
    /// The `data` lines joined with newlines; `None` when there were none.
    pub data: Option<String>,
}

impl Event {
    /// The event in wire form, with `data` in place of its own.
    pub fn encode(&self, data: Option<&str>) -> Vec<u8> {
        let mut out = Vec::new();
        for l in &self.other {
            out.extend_from_slice(l.as_bytes());
            out.push(b'\n');
        }
        if let Some(d) = data {
            for l in d.split('\n') {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(l.as_bytes());
                out.push(b'\n');
            }
        }
        out.push(b'\n');
        out
    }
}

/// An event stream a peer may not send.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// An event over the bound.
    #[error("an event of over {0} bytes")]
    TooLarge(usize),
    /// A line that is not UTF-8, which the spec does not allow and a
    /// client would decode its own way.
    #[error("a line that is not UTF-8")]
    NotUtf8,
}

/// Reads events out of chunks as they come. Lines end at CR, LF or CRLF,
/// as the spec says, so a bare CR cannot hide a line from the gateway that
/// a client would read; a byte-order mark opening the stream is skipped,
/// as clients skip it.
#[derive(Debug)]
pub struct Reader {
    buf: Vec<u8>,
    event: Event,
    size: usize,
    max: usize,
    /// The last line ended with a CR: an LF opening the next chunk ends
    /// nothing.
    after_cr: bool,
    /// Nothing read yet: a BOM may open the stream.
    at_start: bool,
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

impl Reader {
    /// A reader refusing events over `max` bytes.
    pub fn new(max: usize) -> Self {
        Reader {
            buf: Vec::new(),
            event: Event::default(),
            size: 0,
            max,
            after_cr: false,
            at_start: true,
        }
    }

    /// Takes `chunk` and returns the events it completed.
    ///
    /// # Errors
    /// A [`StreamError`] when an event grows past the bound or a line is
    /// not UTF-8; the stream cannot be read on.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Event>, StreamError> {
        self.buf.extend_from_slice(chunk);
        if self.at_start {
            if self.buf.len() < BOM.len() && BOM.starts_with(&self.buf) {
                return Ok(Vec::new());
            }
            if self.buf.starts_with(BOM) {
                self.buf.drain(..BOM.len());
            }
            self.at_start = false;
        }
        let mut events = Vec::new();
        let mut start = 0;
        // An empty chunk settles nothing: the CR still waits for its LF.
        if self.after_cr && !self.buf.is_empty() {
            self.after_cr = false;
            if self.buf[0] == b'\n' {
                start = 1;
            }
        }
        while let Some(i) = self.buf[start..]
            .iter()
            .position(|&b| b == b'\n' || b == b'\r')
        {
            let end = start + i;
            let line = self.buf[start..end].to_vec();
            start = end + 1;
            if self.buf[end] == b'\r' {
                match self.buf.get(start) {
                    Some(b'\n') => start += 1,
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            if let Some(event) = self.line(&line)? {
                events.push(event);
            }
        }
        self.buf.drain(..start);
        if self.size + self.buf.len() > self.max {
            return Err(StreamError::TooLarge(self.max));
        }
        Ok(events)
    }

    /// Takes one line; returns the event an empty line completes.
    fn line(&mut self, line: &[u8]) -> Result<Option<Event>, StreamError> {
        if line.is_empty() {
            self.size = 0;
            let done = self.event.data.is_some() || !self.event.other.is_empty();
            return Ok(done.then(|| std::mem::take(&mut self.event)));
        }
        self.size += line.len();
        if self.size > self.max {
            return Err(StreamError::TooLarge(self.max));
        }
        let text = std::str::from_utf8(line).map_err(|_| StreamError::NotUtf8)?;
        match text.strip_prefix("data") {
            Some(rest) if rest.is_empty() || rest.starts_with(':') => {
                let value = rest.strip_prefix(':').unwrap_or(rest);
                let value = value.strip_prefix(' ').unwrap_or(value);
                match &mut self.event.data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(value);
                    }
                    None => self.event.data = Some(value.to_owned()),
                }
            }
            _ => self.event.other.push(text.to_owned()),
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks_are_read_whole() {
        let wire =
            b"event: message\r\nid: 7\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\n: ping\n\ndata: x\n\n";
        let mut r = Reader::new(1024);
        let mut events = Vec::new();
        for chunk in wire.chunks(3) {
            events.extend(r.push(chunk).expect("ok"));
        }
        assert_eq!(events.len(), 3);
        assert_eq!(events[0].other, vec!["event: message", "id: 7"]);
        assert_eq!(events[0].data.as_deref(), Some("{\"a\":\n1}"));
        assert_eq!(events[1].data, None);
        assert_eq!(
            String::from_utf8(events[0].encode(Some("{\"b\":2}"))).expect("ok"),
            "event: message\nid: 7\ndata: {\"b\":2}\n\n"
        );
    }

    #[test]
    fn lines_end_at_cr_lf_or_crlf_and_a_bom_is_skipped() {
        let read = |chunks: &[&[u8]]| {
            let mut r = Reader::new(1024);
            let mut events = Vec::new();
            for c in chunks {
                events.extend(r.push(c).expect("ok"));
            }
            events
        };
        // A bare CR ends a line: the `data:` after it is read.
        let events = read(&[b"event: x\rdata: {\"a\":1}\r\r"]);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].data.as_deref(), Some("{\"a\":1}"));
        // A CRLF split across chunks is one line end, not two.
        let events = read(&[b"data: 1\r", b"\ndata: 2\r", b"\n\r\n"]);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].data.as_deref(), Some("1\n2"));
        // A BOM opening the stream, even split, is not part of a field name.
        let events = read(&[b"\xEF\xBB", b"\xBFdata: 7\n\n"]);
        assert_eq!(events[0].data.as_deref(), Some("7"));
        let mut r = Reader::new(1024);
        assert_eq!(r.push(b"data: \xFF\n\n"), Err(StreamError::NotUtf8));
    }

    #[test]
    fn an_endless_event_is_refused() {
        let mut r = Reader::new(16);
        assert!(r.push(b"data: 0123456789").is_ok());
        assert_eq!(r.push(b"0123456789"), Err(StreamError::TooLarge(16)));
        let mut r = Reader::new(16);
        assert_eq!(
            r.push(b"data: 0123456789\ndata: 0123456789\n"),
            Err(StreamError::TooLarge(16))
        );
    }
}
