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

/// The event stream was more than a peer may send.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("an event of over {0} bytes")]
pub struct TooLarge(pub usize);

/// Reads events out of chunks as they come.
#[derive(Debug)]
pub struct Reader {
    buf: Vec<u8>,
    event: Event,
    size: usize,
    max: usize,
}

impl Reader {
    /// A reader refusing events over `max` bytes.
    pub fn new(max: usize) -> Self {
        Reader {
            buf: Vec::new(),
            event: Event::default(),
            size: 0,
            max,
        }
    }

    /// Takes `chunk` and returns the events it completed.
    ///
    /// # Errors
    /// [`TooLarge`] when an event grows past the bound.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Event>, TooLarge> {
        self.buf.extend_from_slice(chunk);
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(i) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let mut line = &self.buf[start..start + i];
            start += i + 1;
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            if line.is_empty() {
                if self.event.data.is_some() || !self.event.other.is_empty() {
                    events.push(std::mem::take(&mut self.event));
                }
                self.size = 0;
                continue;
            }
            self.size += line.len();
            if self.size > self.max {
                return Err(TooLarge(self.max));
            }
            let text = String::from_utf8_lossy(line).into_owned();
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
                _ => self.event.other.push(text),
            }
        }
        self.buf.drain(..start);
        if self.size + self.buf.len() > self.max {
            return Err(TooLarge(self.max));
        }
        Ok(events)
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
    fn an_endless_event_is_refused() {
        let mut r = Reader::new(16);
        assert!(r.push(b"data: 0123456789").is_ok());
        assert_eq!(r.push(b"0123456789"), Err(TooLarge(16)));
        let mut r = Reader::new(16);
        assert_eq!(
            r.push(b"data: 0123456789\ndata: 0123456789\n"),
            Err(TooLarge(16))
        );
    }
}
