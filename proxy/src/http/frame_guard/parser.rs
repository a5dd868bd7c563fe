//! Finds HTTP/2 frame headers in a byte stream as it passes, without buffering it: the
//! client's side begins with the connection preface (a stream that does not is HTTP/1 and is
//! left alone); the server's side begins with a frame.

/// The client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADER_LEN: usize = 9;

/// A frame's type, flags and payload length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    pub length: u32,
    pub kind: u8,
    pub flags: u8,
}

#[derive(Debug)]
enum State {
    /// This many bytes of the preface matched so far.
    Preface(usize),
    Header {
        filled: usize,
        bytes: [u8; HEADER_LEN],
    },
    Payload(u32),
    /// Not HTTP/2: nothing to look at.
    Off,
}

#[derive(Debug)]
pub struct FrameParser {
    state: State,
}

impl FrameParser {
    /// For what the client sends: the preface first.
    pub fn client_side() -> Self {
        Self {
            state: State::Preface(0),
        }
    }

    /// For what the server sends: frames from the first byte.
    pub fn server_side() -> Self {
        Self {
            state: State::Header {
                filled: 0,
                bytes: [0; HEADER_LEN],
            },
        }
    }

    /// Whether the stream is known not to be HTTP/2.
    pub fn is_off(&self) -> bool {
        matches!(self.state, State::Off)
    }

    /// Whether the preface has been seen.
    pub fn is_http2(&self) -> bool {
        !matches!(self.state, State::Off | State::Preface(_))
    }

    /// Feeds the next bytes of the stream; calls `frame` with each header completed in them.
    /// Stops early (returning the error) when `frame` does.
    pub fn feed<E>(
        &mut self,
        mut data: &[u8],
        mut frame: impl FnMut(FrameHead) -> Result<(), E>,
    ) -> Result<(), E> {
        while !data.is_empty() {
            match &mut self.state {
                State::Off => return Ok(()),
                State::Preface(matched) => {
                    let want = &PREFACE[*matched..];
                    let take = want.len().min(data.len());
                    if data[..take] != want[..take] {
                        self.state = State::Off;
                        return Ok(());
                    }
                    *matched += take;
                    data = &data[take..];
                    if *matched == PREFACE.len() {
                        self.state = State::Header {
                            filled: 0,
                            bytes: [0; HEADER_LEN],
                        };
                    }
                }
                State::Header { filled, bytes } => {
                    let take = (HEADER_LEN - *filled).min(data.len());
                    bytes[*filled..*filled + take].copy_from_slice(&data[..take]);
                    *filled += take;
                    data = &data[take..];
                    if *filled == HEADER_LEN {
                        let head = FrameHead {
                            length: u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]),
                            kind: bytes[3],
                            flags: bytes[4],
                        };
                        self.state = State::Payload(head.length);
                        frame(head)?;
                    }
                }
                State::Payload(left) => {
                    let take = (*left as usize).min(data.len());
                    *left -= take as u32;
                    data = &data[take..];
                }
            }
            if let State::Payload(0) = self.state {
                self.state = State::Header {
                    filled: 0,
                    bytes: [0; HEADER_LEN],
                };
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let length = payload.len() as u32;
        let mut bytes = length.to_be_bytes()[1..].to_vec();
        bytes.extend([kind, flags, 0, 0, 0, 1]);
        bytes.extend_from_slice(payload);
        bytes
    }

    fn heads(parser: &mut FrameParser, chunks: &[&[u8]]) -> Vec<FrameHead> {
        let mut seen = Vec::new();
        for chunk in chunks {
            parser
                .feed::<()>(chunk, |head| {
                    seen.push(head);
                    Ok(())
                })
                .unwrap();
        }
        seen
    }

    #[test]
    fn frames_are_found_however_the_bytes_are_split() {
        let mut stream = PREFACE.to_vec();
        stream.extend(frame(4, 0, &[0; 6]));
        stream.extend(frame(6, 0, b"12345678"));
        stream.extend(frame(0, 1, b""));
        let expected = [
            FrameHead {
                length: 6,
                kind: 4,
                flags: 0,
            },
            FrameHead {
                length: 8,
                kind: 6,
                flags: 0,
            },
            FrameHead {
                length: 0,
                kind: 0,
                flags: 1,
            },
        ];
        let whole = heads(&mut FrameParser::client_side(), &[&stream]);
        assert_eq!(whole, expected);
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        let mut parser = FrameParser::client_side();
        assert_eq!(heads(&mut parser, &bytes), expected);
        assert!(parser.is_http2());
    }

    #[test]
    fn http1_is_left_alone() {
        let mut parser = FrameParser::client_side();
        assert!(heads(&mut parser, &[b"GET / HTTP/1.1\r\n\r\n"]).is_empty());
        assert!(parser.is_off());
        // A preface cut short by something else is not HTTP/2 either.
        let mut parser = FrameParser::client_side();
        assert!(heads(&mut parser, &[b"PRI * HTTP/1.1"]).is_empty());
        assert!(parser.is_off());
    }

    #[test]
    fn the_server_side_starts_with_a_frame() {
        let mut parser = FrameParser::server_side();
        let data = frame(0, 0, &[7; 100]);
        assert_eq!(
            heads(&mut parser, &[&data[..50], &data[50..]]),
            [FrameHead {
                length: 100,
                kind: 0,
                flags: 0
            }]
        );
    }
}
