//! The TraCI wire format, as pure functions over bytes: no IO, no clock.
//!
//! # The format (SUMO 1.15, TraCI API 20; ids from `$SUMO_HOME/tools/traci/constants.py`)
//!
//! - A **message** is a 4-byte big-endian total length (counting those 4 bytes) followed by
//!   commands. A message longer than the configured maximum is refused before it is read.
//! - A **command** is a 1-byte length (counting the length and id bytes) + 1-byte id + content;
//!   when that would exceed 255 bytes it is `0x00`, a 4-byte length (counting the `0x00`, the
//!   4 bytes and the id) and the id.
//! - **Strings** are a 4-byte length and Latin-1 bytes (as the Python client encodes them).
//!   **Typed values** are a type byte and the value: ubyte 0x07, byte 0x08, int 0x09, double 0x0B,
//!   string 0x0C, string list 0x0E (count, strings), compound 0x0F (count, typed values), double
//!   list 0x10 (count, doubles). Numbers are big-endian.
//! - Every command is answered by a **status** command (same id; result 0x00 ok, 0x01 not
//!   implemented, 0xFF error; a description string). A get is then answered by a command with the
//!   request id + 0x10, the variable id, the object id and a typed value; getVersion by a command
//!   0x00 with the API version and a string; simulationStep by a bare int (number of subscription
//!   results) and that many subscription commands.
//!
//! # The rules
//!
//! - Decoding never panics and never allocates more than the input can hold: every count is
//!   checked against the bytes left before anything is reserved, compound values nest at most
//!   [`COMPOUND_DEPTH_MAX`] deep, and every declared length must match what it frames exactly.
//! - Encoding fails (rather than truncating) on strings that are not Latin-1 or lengths that do
//!   not fit the wire's 32-bit fields.
//! - A response is decoded against the requests it answers ([`decode_responses`]): the format
//!   of a simulationStep answer cannot be told from its bytes alone, and every answer's ids are
//!   checked against its request.

use std::fmt::Write as _;

/// The largest message accepted by default, in bytes (16 MiB).
pub const MESSAGE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// How deep compound values may nest.
pub const COMPOUND_DEPTH_MAX: usize = 8;
/// The TraCI API version this client speaks (SUMO 1.15).
pub const API_VERSION: i32 = 20;

/// Command, variable and type ids (those of `constants.py`).
pub mod id {
    /// getVersion.
    pub const CMD_GETVERSION: u8 = 0x00;
    /// simulationStep.
    pub const CMD_SIMSTEP: u8 = 0x02;
    /// setOrder.
    pub const CMD_SETORDER: u8 = 0x03;
    /// close.
    pub const CMD_CLOSE: u8 = 0x7F;
    /// Get an induction loop (E1) variable.
    pub const CMD_GET_INDUCTIONLOOP_VARIABLE: u8 = 0xA0;
    /// Get a traffic-light variable.
    pub const CMD_GET_TL_VARIABLE: u8 = 0xA2;
    /// Get a simulation variable.
    pub const CMD_GET_SIM_VARIABLE: u8 = 0xAB;
    /// Get a lane-area detector (E2) variable.
    pub const CMD_GET_LANEAREA_VARIABLE: u8 = 0xAD;
    /// Set a traffic-light variable.
    pub const CMD_SET_TL_VARIABLE: u8 = 0xC2;
    /// The list of all object ids of a domain.
    pub const TRACI_ID_LIST: u8 = 0x00;
    /// Vehicles on the detector in the last step.
    pub const LAST_STEP_VEHICLE_NUMBER: u8 = 0x10;
    /// Mean speed of the vehicles in the last step (m/s; -1 with none).
    pub const LAST_STEP_MEAN_SPEED: u8 = 0x11;
    /// Ids of the vehicles on the detector in the last step.
    pub const LAST_STEP_VEHICLE_ID_LIST: u8 = 0x12;
    /// Occupancy in the last step (percent).
    pub const LAST_STEP_OCCUPANCY: u8 = 0x13;
    /// Jam length in vehicles (lane-area detector).
    pub const JAM_LENGTH_VEHICLE: u8 = 0x18;
    /// Traffic-light phase index.
    pub const TL_PHASE_INDEX: u8 = 0x22;
    /// Current simulation time in seconds (double).
    pub const VAR_TIME: u8 = 0x66;
    /// Vehicles still expected: running plus still to depart.
    pub const VAR_MIN_EXPECTED_VEHICLES: u8 = 0x7D;
    /// Type byte: unsigned byte.
    pub const TYPE_UBYTE: u8 = 0x07;
    /// Type byte: signed byte.
    pub const TYPE_BYTE: u8 = 0x08;
    /// Type byte: 32-bit int.
    pub const TYPE_INTEGER: u8 = 0x09;
    /// Type byte: double.
    pub const TYPE_DOUBLE: u8 = 0x0B;
    /// Type byte: string.
    pub const TYPE_STRING: u8 = 0x0C;
    /// Type byte: string list.
    pub const TYPE_STRINGLIST: u8 = 0x0E;
    /// Type byte: compound.
    pub const TYPE_COMPOUND: u8 = 0x0F;
    /// Type byte: double list.
    pub const TYPE_DOUBLELIST: u8 = 0x10;
    /// Status result: ok.
    pub const RTYPE_OK: u8 = 0x00;
    /// Status result: not implemented.
    pub const RTYPE_NOTIMPLEMENTED: u8 = 0x01;
    /// Status result: error.
    pub const RTYPE_ERR: u8 = 0xFF;
}

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ends before a field does.
    #[error("input ends at byte {len}: {need} bytes needed at byte {at}")]
    Short {
        /// Where the field starts.
        at: usize,
        /// Its size.
        need: usize,
        /// The input's length.
        len: usize,
    },
    /// A length or count is negative or cannot fit in what is left.
    #[error("{what} at byte {at} is {value}, more than the {left} bytes left can hold")]
    Count {
        /// What was counted.
        what: &'static str,
        /// Where.
        at: usize,
        /// The value read.
        value: i64,
        /// Bytes left after it.
        left: usize,
    },
    /// A message declares a length above the maximum.
    #[error("message of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// The declared length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// A declared length does not match what it frames.
    #[error("{what} declares {declared} bytes but {actual} are there")]
    Length {
        /// What was framed.
        what: &'static str,
        /// The declared length.
        declared: usize,
        /// The actual length.
        actual: usize,
    },
    /// An unknown type byte.
    #[error("unknown value type 0x{type_id:02x} at byte {at}")]
    UnknownType {
        /// The type byte.
        type_id: u8,
        /// Where.
        at: usize,
    },
    /// Compound values nest too deep.
    #[error("compound values nest more than {COMPOUND_DEPTH_MAX} deep")]
    TooDeep,
    /// An answer's id does not match its request.
    #[error("expected {what} {expected}, got {got}")]
    Unexpected {
        /// Which field.
        what: &'static str,
        /// What the request implies.
        expected: String,
        /// What came.
        got: String,
    },
    /// Bytes follow the last expected answer.
    #[error("{0} bytes follow the last answer")]
    Trailing(usize),
}

/// Why a value or command could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A string has a character outside Latin-1.
    #[error("string {0:?} is not Latin-1")]
    NotLatin1(String),
    /// A length does not fit the wire's 32-bit field.
    #[error("{what} of {len} exceeds the wire's limit")]
    TooLong {
        /// What.
        what: &'static str,
        /// Its length.
        len: usize,
    },
}

/// A typed value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// 0x07.
    UByte(u8),
    /// 0x08.
    Byte(i8),
    /// 0x09.
    Int(i32),
    /// 0x0B.
    Double(f64),
    /// 0x0C.
    String(String),
    /// 0x0E.
    StringList(Vec<String>),
    /// 0x10.
    DoubleList(Vec<f64>),
    /// 0x0F: values of any type.
    Compound(Vec<Value>),
}

impl Value {
    /// The type name, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::UByte(_) => "ubyte",
            Value::Byte(_) => "byte",
            Value::Int(_) => "int",
            Value::Double(_) => "double",
            Value::String(_) => "string",
            Value::StringList(_) => "string list",
            Value::DoubleList(_) => "double list",
            Value::Compound(_) => "compound",
        }
    }

    /// Appends the type byte and the value.
    ///
    /// # Errors
    ///
    /// [`EncodeError`] for a string that is not Latin-1 or a list too long for the wire.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        match self {
            Value::UByte(v) => {
                out.push(id::TYPE_UBYTE);
                out.push(*v);
            }
            Value::Byte(v) => {
                out.push(id::TYPE_BYTE);
                out.extend_from_slice(&v.to_be_bytes());
            }
            Value::Int(v) => {
                out.push(id::TYPE_INTEGER);
                out.extend_from_slice(&v.to_be_bytes());
            }
            Value::Double(v) => {
                out.push(id::TYPE_DOUBLE);
                out.extend_from_slice(&v.to_be_bytes());
            }
            Value::String(s) => {
                out.push(id::TYPE_STRING);
                put_string(out, s)?;
            }
            Value::StringList(list) => {
                out.push(id::TYPE_STRINGLIST);
                put_count(out, "string list", list.len())?;
                for s in list {
                    put_string(out, s)?;
                }
            }
            Value::DoubleList(list) => {
                out.push(id::TYPE_DOUBLELIST);
                put_count(out, "double list", list.len())?;
                for v in list {
                    out.extend_from_slice(&v.to_be_bytes());
                }
            }
            Value::Compound(items) => {
                out.push(id::TYPE_COMPOUND);
                put_count(out, "compound", items.len())?;
                for v in items {
                    v.encode(out)?;
                }
            }
        }
        Ok(())
    }

    /// Reads one typed value.
    ///
    /// # Errors
    ///
    /// [`DecodeError`] on any malformed input.
    pub fn decode(c: &mut Cursor<'_>) -> Result<Value, DecodeError> {
        Self::decode_at_depth(c, 0)
    }

    fn decode_at_depth(c: &mut Cursor<'_>, depth: usize) -> Result<Value, DecodeError> {
        let at = c.pos();
        let type_id = c.u8()?;
        Ok(match type_id {
            id::TYPE_UBYTE => Value::UByte(c.u8()?),
            id::TYPE_BYTE => Value::Byte(i8::from_be_bytes([c.u8()?])),
            id::TYPE_INTEGER => Value::Int(c.i32()?),
            id::TYPE_DOUBLE => Value::Double(c.f64()?),
            id::TYPE_STRING => Value::String(c.string()?),
            id::TYPE_STRINGLIST => Value::StringList(c.string_list()?),
            id::TYPE_DOUBLELIST => {
                let n = c.count("double list count", 8)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(c.f64()?);
                }
                Value::DoubleList(v)
            }
            id::TYPE_COMPOUND => {
                if depth >= COMPOUND_DEPTH_MAX {
                    return Err(DecodeError::TooDeep);
                }
                // Each item takes at least 2 bytes (type and a one-byte value).
                let n = c.count("compound count", 2)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(Self::decode_at_depth(c, depth + 1)?);
                }
                Value::Compound(v)
            }
            other => return Err(DecodeError::UnknownType { type_id: other, at }),
        })
    }
}

fn put_count(out: &mut Vec<u8>, what: &'static str, len: usize) -> Result<(), EncodeError> {
    let n = i32::try_from(len).map_err(|_| EncodeError::TooLong { what, len })?;
    out.extend_from_slice(&n.to_be_bytes());
    Ok(())
}

/// Appends a length-prefixed Latin-1 string.
///
/// # Errors
///
/// [`EncodeError::NotLatin1`] if a character is above U+00FF.
pub fn put_string(out: &mut Vec<u8>, s: &str) -> Result<(), EncodeError> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    for ch in s.chars() {
        let b = u8::try_from(u32::from(ch)).map_err(|_| EncodeError::NotLatin1(s.to_owned()))?;
        out.push(b);
    }
    let len = out.len() - start - 4;
    let n = i32::try_from(len).map_err(|_| EncodeError::TooLong {
        what: "string",
        len,
    })?;
    out[start..start + 4].copy_from_slice(&n.to_be_bytes());
    Ok(())
}

/// A read position in a byte slice; every read checks what is left.
#[derive(Debug, Clone)]
pub struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// The position, in bytes from the start.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes left.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// The next `n` bytes.
    ///
    /// # Errors
    ///
    /// [`DecodeError::Short`] if fewer are left.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Short {
                at: self.pos,
                need: n,
                len: self.buf.len(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    /// One byte.
    ///
    /// # Errors
    ///
    /// [`DecodeError::Short`] at the end of the input.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    /// A big-endian 32-bit int.
    ///
    /// # Errors
    ///
    /// [`DecodeError::Short`] at the end of the input.
    pub fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    /// A big-endian double.
    ///
    /// # Errors
    ///
    /// [`DecodeError::Short`] at the end of the input.
    pub fn f64(&mut self) -> Result<f64, DecodeError> {
        Ok(f64::from_be_bytes(self.array()?))
    }

    /// A count of items of at least `item_bytes` each, checked against the bytes left.
    fn count(&mut self, what: &'static str, item_bytes: usize) -> Result<usize, DecodeError> {
        let at = self.pos;
        let n = self.i32()?;
        let left = self.remaining();
        match usize::try_from(n) {
            Ok(n) if n.saturating_mul(item_bytes) <= left => Ok(n),
            _ => Err(DecodeError::Count {
                what,
                at,
                value: i64::from(n),
                left,
            }),
        }
    }

    /// A length-prefixed Latin-1 string.
    ///
    /// # Errors
    ///
    /// [`DecodeError`] if the length is negative or longer than the input.
    pub fn string(&mut self) -> Result<String, DecodeError> {
        let n = self.count("string length", 1)?;
        Ok(self.take(n)?.iter().map(|&b| char::from(b)).collect())
    }

    /// A count and that many strings.
    ///
    /// # Errors
    ///
    /// [`DecodeError`] on any malformed input.
    pub fn string_list(&mut self) -> Result<Vec<String>, DecodeError> {
        let n = self.count("string list count", 4)?;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(self.string()?);
        }
        Ok(v)
    }

    /// One command in the short or the long form.
    ///
    /// # Errors
    ///
    /// [`DecodeError`] if the length is impossible or longer than the input.
    pub fn command(&mut self) -> Result<RawCommand<'a>, DecodeError> {
        let short = self.u8()?;
        let (header, declared) = if short == 0 {
            let total = u32::from_be_bytes(self.array()?);
            (6, usize::try_from(total).unwrap_or(usize::MAX))
        } else {
            (2, usize::from(short))
        };
        if declared < header {
            return Err(DecodeError::Length {
                what: "command",
                declared,
                actual: header,
            });
        }
        let id = self.u8()?;
        let content = self.take(declared - header)?;
        Ok(RawCommand { id, content })
    }
}

/// One command as framed on the wire: its id and content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawCommand<'a> {
    /// The command id.
    pub id: u8,
    /// The bytes after the id.
    pub content: &'a [u8],
}

/// Appends a command with `id` and `content`, in the long form if the short one cannot hold it.
///
/// # Errors
///
/// [`EncodeError::TooLong`] if the command exceeds the 32-bit length.
pub fn encode_command(out: &mut Vec<u8>, id: u8, content: &[u8]) -> Result<(), EncodeError> {
    let short = content.len() + 2;
    if let Ok(len) = u8::try_from(short) {
        out.push(len);
    } else {
        let total = content.len() + 6;
        let total = u32::try_from(total).map_err(|_| EncodeError::TooLong {
            what: "command",
            len: total,
        })?;
        out.push(0);
        out.extend_from_slice(&total.to_be_bytes());
    }
    out.push(id);
    out.extend_from_slice(content);
    Ok(())
}

/// Wraps encoded commands into a message (prefixes the total length).
///
/// # Errors
///
/// [`EncodeError::TooLong`] if the message exceeds the 32-bit length.
pub fn frame(commands: &[u8]) -> Result<Vec<u8>, EncodeError> {
    let total = commands.len() + 4;
    let n = u32::try_from(total).map_err(|_| EncodeError::TooLong {
        what: "message",
        len: total,
    })?;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(commands);
    Ok(out)
}

/// The body length a message header announces (the total minus the 4 header bytes).
///
/// # Errors
///
/// [`DecodeError::TooLarge`] above `max_bytes`, [`DecodeError::Length`] below 4.
pub fn body_len(header: [u8; 4], max_bytes: usize) -> Result<usize, DecodeError> {
    let total = usize::try_from(u32::from_be_bytes(header)).unwrap_or(usize::MAX);
    if total > max_bytes {
        return Err(DecodeError::TooLarge {
            len: total,
            max: max_bytes,
        });
    }
    total.checked_sub(4).ok_or(DecodeError::Length {
        what: "message",
        declared: total,
        actual: 4,
    })
}

/// Splits a whole message (header included) into its commands. For requests and for answers
/// made only of commands (not a simulationStep's); see [`decode_responses`] for answers.
///
/// # Errors
///
/// [`DecodeError`] if the header does not match the length or a command is malformed.
pub fn decode_message(bytes: &[u8], max_bytes: usize) -> Result<Vec<RawCommand<'_>>, DecodeError> {
    let mut c = Cursor::new(bytes);
    let body = body_len(c.array()?, max_bytes)?;
    if body != c.remaining() {
        return Err(DecodeError::Length {
            what: "message",
            declared: body + 4,
            actual: bytes.len(),
        });
    }
    let mut out = Vec::new();
    while !c.is_empty() {
        out.push(c.command()?);
    }
    Ok(out)
}

/// A command a client sends.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// 0x00: the API version and SUMO's name.
    GetVersion,
    /// 0x03: this client's place in the order of clients stepping the simulation.
    SetOrder(i32),
    /// 0x02: simulate up to `target_s` seconds (0: exactly one step).
    SimulationStep {
        /// Target time in seconds.
        target_s: f64,
    },
    /// 0x7F: end this client's connection.
    Close,
    /// A get (0xA0..=0xAF): variable `var` of `object` in `domain`.
    Get {
        /// The get command id (e.g. 0xA0 induction loop).
        domain: u8,
        /// The variable id.
        var: u8,
        /// The object id ("" for simulation-wide variables).
        object: String,
    },
    /// A set (0xC0..=0xCF): variable `var` of `object` in `domain` to `value`.
    Set {
        /// The set command id (e.g. 0xC2 traffic light).
        domain: u8,
        /// The variable id.
        var: u8,
        /// The object id.
        object: String,
        /// The value.
        value: Value,
    },
}

impl Request {
    /// The command id.
    pub fn command_id(&self) -> u8 {
        match self {
            Request::GetVersion => id::CMD_GETVERSION,
            Request::SetOrder(_) => id::CMD_SETORDER,
            Request::SimulationStep { .. } => id::CMD_SIMSTEP,
            Request::Close => id::CMD_CLOSE,
            Request::Get { domain, .. } | Request::Set { domain, .. } => *domain,
        }
    }

    /// Appends this request as one command.
    ///
    /// # Errors
    ///
    /// [`EncodeError`] for strings that are not Latin-1 or sizes beyond the wire's.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let mut content = Vec::new();
        match self {
            Request::GetVersion | Request::Close => {}
            Request::SetOrder(order) => content.extend_from_slice(&order.to_be_bytes()),
            Request::SimulationStep { target_s } => {
                content.extend_from_slice(&target_s.to_be_bytes());
            }
            Request::Get { var, object, .. } => {
                content.push(*var);
                put_string(&mut content, object)?;
            }
            Request::Set {
                var, object, value, ..
            } => {
                content.push(*var);
                put_string(&mut content, object)?;
                value.encode(&mut content)?;
            }
        }
        encode_command(out, self.command_id(), &content)
    }

    /// Reads a request back from a command (the server's side; for tests and fuzzing).
    ///
    /// # Errors
    ///
    /// [`DecodeError`] if the command is not one of [`Request`]'s or is malformed.
    pub fn decode(cmd: RawCommand<'_>) -> Result<Request, DecodeError> {
        let mut c = Cursor::new(cmd.content);
        let req = match cmd.id {
            id::CMD_GETVERSION => Request::GetVersion,
            id::CMD_CLOSE => Request::Close,
            id::CMD_SETORDER => Request::SetOrder(c.i32()?),
            id::CMD_SIMSTEP => Request::SimulationStep { target_s: c.f64()? },
            0xA0..=0xAF => Request::Get {
                domain: cmd.id,
                var: c.u8()?,
                object: c.string()?,
            },
            0xC0..=0xCF => Request::Set {
                domain: cmd.id,
                var: c.u8()?,
                object: c.string()?,
                value: Value::decode(&mut c)?,
            },
            other => {
                return Err(DecodeError::Unexpected {
                    what: "request command",
                    expected: "a known command".into(),
                    got: format!("0x{other:02x}"),
                });
            }
        };
        if !c.is_empty() {
            return Err(DecodeError::Trailing(c.remaining()));
        }
        Ok(req)
    }
}

/// Encodes `requests` as one message.
///
/// # Errors
///
/// [`EncodeError`] if a request cannot be encoded.
pub fn encode_requests(requests: &[Request]) -> Result<Vec<u8>, EncodeError> {
    let mut body = Vec::new();
    for r in requests {
        r.encode(&mut body)?;
    }
    frame(&body)
}

/// The status SUMO returns for every command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The command answered.
    pub command: u8,
    /// 0x00 ok, 0x01 not implemented, 0xFF error.
    pub result: u8,
    /// SUMO's description (empty when ok).
    pub description: String,
}

impl Status {
    /// Appends this status as a command (the server's side; for tests).
    ///
    /// # Errors
    ///
    /// [`EncodeError`] if the description cannot be encoded.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let mut content = vec![self.result];
        put_string(&mut content, &self.description)?;
        encode_command(out, self.command, &content)
    }

    fn decode(c: &mut Cursor<'_>) -> Result<Status, DecodeError> {
        let cmd = c.command()?;
        let mut body = Cursor::new(cmd.content);
        let status = Status {
            command: cmd.id,
            result: body.u8()?,
            description: body.string()?,
        };
        if !body.is_empty() {
            return Err(DecodeError::Length {
                what: "status command",
                declared: cmd.content.len(),
                actual: body.pos(),
            });
        }
        Ok(status)
    }
}

/// What one request was answered with.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    /// A status ok and nothing more (setOrder, close, a set).
    Ok,
    /// getVersion.
    Version {
        /// TraCI API version.
        api: i32,
        /// SUMO's name and version.
        software: String,
    },
    /// simulationStep; the subscription results (this client subscribes to nothing) are
    /// skipped and counted.
    Stepped {
        /// How many subscription results came.
        subscriptions: usize,
    },
    /// A get's value.
    Value(Value),
}

/// Why an answer was not what was asked.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ResponseError {
    /// SUMO refused a command (status not ok).
    #[error("SUMO refused command 0x{:02x} (result 0x{:02x}): {}", .0.command, .0.result, .0.description)]
    Refused(Status),
    /// The bytes are malformed or do not answer the requests.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

fn expect_eq<T: PartialEq + std::fmt::Debug>(
    what: &'static str,
    expected: T,
    got: T,
) -> Result<(), DecodeError> {
    if expected == got {
        Ok(())
    } else {
        Err(DecodeError::Unexpected {
            what,
            expected: format!("{expected:?}"),
            got: format!("{got:?}"),
        })
    }
}

/// Decodes the body of an answer (the message without its 4-byte header) to `requests`, sent
/// in one message: one [`Response`] per request, in order.
///
/// # Errors
///
/// [`ResponseError::Refused`] for the first command SUMO refused, [`ResponseError::Decode`]
/// for bytes that are malformed or do not answer the requests (ids checked, no trailing bytes).
pub fn decode_responses(body: &[u8], requests: &[Request]) -> Result<Vec<Response>, ResponseError> {
    let mut c = Cursor::new(body);
    let mut out = Vec::with_capacity(requests.len());
    for req in requests {
        let status = Status::decode(&mut c)?;
        expect_eq("status for command", req.command_id(), status.command)?;
        if status.result != id::RTYPE_OK {
            return Err(ResponseError::Refused(status));
        }
        let response = match req {
            Request::SetOrder(_) | Request::Close | Request::Set { .. } => Response::Ok,
            Request::GetVersion => {
                let cmd = c.command()?;
                expect_eq("getVersion answer", id::CMD_GETVERSION, cmd.id)?;
                let mut b = Cursor::new(cmd.content);
                let api = b.i32()?;
                let software = b.string()?;
                if !b.is_empty() {
                    return Err(DecodeError::Trailing(b.remaining()).into());
                }
                Response::Version { api, software }
            }
            Request::SimulationStep { .. } => {
                // Each subscription result is a command of at least 2 bytes.
                let n = c.count("subscription count", 2)?;
                for _ in 0..n {
                    c.command()?;
                }
                Response::Stepped { subscriptions: n }
            }
            Request::Get {
                domain,
                var,
                object,
            } => {
                let cmd = c.command()?;
                expect_eq("answer id", domain.wrapping_add(0x10), cmd.id)?;
                let mut b = Cursor::new(cmd.content);
                expect_eq("variable", *var, b.u8()?)?;
                expect_eq("object", object.as_str(), b.string()?.as_str())?;
                let value = Value::decode(&mut b)?;
                if !b.is_empty() {
                    return Err(DecodeError::Trailing(b.remaining()).into());
                }
                Response::Value(value)
            }
        };
        out.push(response);
    }
    if !c.is_empty() {
        return Err(DecodeError::Trailing(c.remaining()).into());
    }
    Ok(out)
}

/// Bytes as spaced hex (`00 0b 07`), for logs and tests.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn unhex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).expect("hex"))
            .collect()
    }

    #[test]
    fn set_phase_matches_the_bytes_sumo_accepts_and_its_answer_decodes() {
        let req = Request::Set {
            domain: id::CMD_SET_TL_VARIABLE,
            var: id::TL_PHASE_INDEX,
            object: "B1".into(),
            value: Value::Int(2),
        };
        let bytes = encode_requests(std::slice::from_ref(&req)).expect("encodes");
        assert_eq!(
            hex(&bytes),
            "00 00 00 12 0e c2 22 00 00 00 02 42 31 09 00 00 00 02"
        );
        let cmds = decode_message(&bytes, MESSAGE_BYTES_MAX).expect("decodes");
        assert_eq!(Request::decode(cmds[0]), Ok(req.clone()));
        let answer = unhex("00 00 00 0b 07 c2 00 00 00 00 00");
        let body = body_len([answer[0], answer[1], answer[2], answer[3]], 1024).expect("len");
        assert_eq!(body, 7);
        assert_eq!(
            decode_responses(&answer[4..], &[req]),
            Ok(vec![Response::Ok])
        );
    }

    #[test]
    fn long_commands_use_the_extended_length() {
        let object = "x".repeat(300);
        let req = Request::Get {
            domain: id::CMD_GET_INDUCTIONLOOP_VARIABLE,
            var: id::LAST_STEP_VEHICLE_ID_LIST,
            object: object.clone(),
        };
        let mut out = Vec::new();
        req.encode(&mut out).expect("encodes");
        // 0x00, 4-byte length counting everything, id, var, string.
        assert_eq!(out[0], 0);
        let total = u32::from_be_bytes([out[1], out[2], out[3], out[4]]) as usize;
        assert_eq!(total, out.len());
        assert_eq!(total, 1 + 4 + 1 + 1 + 4 + 300);
        assert_eq!(out[5], 0xA0);
        let mut c = Cursor::new(&out);
        let cmd = c.command().expect("decodes");
        assert_eq!(Request::decode(cmd), Ok(req));
        // The longest short command and the shortest long one.
        let mut a = Vec::new();
        encode_command(&mut a, 1, &[0; 253]).expect("encodes");
        assert_eq!((a[0], a.len()), (255, 255));
        let mut b = Vec::new();
        encode_command(&mut b, 1, &[0; 254]).expect("encodes");
        assert_eq!((b[0], b.len()), (0, 260));
    }

    #[test]
    fn a_refusal_and_a_get_answer_decode_against_their_requests() {
        let get = Request::Get {
            domain: id::CMD_GET_LANEAREA_VARIABLE,
            var: id::JAM_LENGTH_VEHICLE,
            object: "e2_A1_A0A1_0".into(),
        };
        let mut body = Vec::new();
        Status {
            command: 0xAD,
            result: 0,
            description: String::new(),
        }
        .encode(&mut body)
        .expect("encodes");
        let mut content = vec![id::JAM_LENGTH_VEHICLE];
        put_string(&mut content, "e2_A1_A0A1_0").expect("latin1");
        Value::Int(4).encode(&mut content).expect("encodes");
        encode_command(&mut body, 0xBD, &content).expect("encodes");
        assert_eq!(
            decode_responses(&body, std::slice::from_ref(&get)),
            Ok(vec![Response::Value(Value::Int(4))])
        );
        // The answer to another object is refused.
        let other = Request::Get {
            domain: id::CMD_GET_LANEAREA_VARIABLE,
            var: id::JAM_LENGTH_VEHICLE,
            object: "e2_B1_x_0".into(),
        };
        assert!(matches!(
            decode_responses(&body, &[other]),
            Err(ResponseError::Decode(DecodeError::Unexpected {
                what: "object",
                ..
            }))
        ));
        let mut refused = Vec::new();
        Status {
            command: 0xAD,
            result: id::RTYPE_ERR,
            description: "Lane area detector 'x' is not known".into(),
        }
        .encode(&mut refused)
        .expect("encodes");
        let e = decode_responses(&refused, &[get]).expect_err("refused");
        assert!(e.to_string().contains("is not known"), "{e}");
        // A step answer with no subscriptions; a version answer.
        let mut body = Vec::new();
        Status {
            command: id::CMD_SIMSTEP,
            result: 0,
            description: String::new(),
        }
        .encode(&mut body)
        .expect("encodes");
        body.extend_from_slice(&0i32.to_be_bytes());
        assert_eq!(
            decode_responses(&body, &[Request::SimulationStep { target_s: 0.0 }]),
            Ok(vec![Response::Stepped { subscriptions: 0 }])
        );
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        for bad in [
            &[][..],
            &[0, 0, 0],
            &[0, 0, 0, 3],
            &[0, 0, 0, 6, 1, 0],
            &[0, 0, 0, 5, 0],
            &[0xff, 0xff, 0xff, 0xff],
        ] {
            assert!(decode_message(bad, MESSAGE_BYTES_MAX).is_err(), "{bad:?}");
        }
        let mut c = Cursor::new(&[id::TYPE_STRINGLIST, 0x7f, 0xff, 0xff, 0xff]);
        assert!(matches!(
            Value::decode(&mut c),
            Err(DecodeError::Count { .. })
        ));
        let mut c = Cursor::new(&[id::TYPE_STRING, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(
            Value::decode(&mut c),
            Err(DecodeError::Count { .. })
        ));
        let deep: Vec<u8> = std::iter::repeat_n([id::TYPE_COMPOUND, 0, 0, 0, 1], 20)
            .flatten()
            .collect();
        assert_eq!(
            Value::decode(&mut Cursor::new(&deep)),
            Err(DecodeError::TooDeep)
        );
        assert!(matches!(
            body_len([0x7f, 0, 0, 0], MESSAGE_BYTES_MAX),
            Err(DecodeError::TooLarge { .. })
        ));
        assert!(put_string(&mut Vec::new(), "π").is_err());
    }

    fn latin1() -> impl Strategy<Value = String> {
        proptest::collection::vec(any::<u8>(), 0..40)
            .prop_map(|b| b.into_iter().map(char::from).collect())
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<u8>().prop_map(Value::UByte),
            any::<i8>().prop_map(Value::Byte),
            any::<i32>().prop_map(Value::Int),
            any::<f64>()
                .prop_filter("NaN never equals itself", |v| !v.is_nan())
                .prop_map(Value::Double),
            latin1().prop_map(Value::String),
            proptest::collection::vec(latin1(), 0..5).prop_map(Value::StringList),
            proptest::collection::vec(-1e9f64..1e9, 0..5).prop_map(Value::DoubleList),
        ];
        leaf.prop_recursive(3, 24, 5, |inner| {
            proptest::collection::vec(inner, 0..5).prop_map(Value::Compound)
        })
    }

    fn request() -> impl Strategy<Value = Request> {
        prop_oneof![
            Just(Request::GetVersion),
            Just(Request::Close),
            any::<i32>().prop_map(Request::SetOrder),
            (0.0f64..1e6).prop_map(|target_s| Request::SimulationStep { target_s }),
            (0xA0u8..=0xAF, any::<u8>(), latin1()).prop_map(|(domain, var, object)| {
                Request::Get {
                    domain,
                    var,
                    object,
                }
            }),
            (0xC0u8..=0xCF, any::<u8>(), latin1(), value()).prop_map(
                |(domain, var, object, value)| Request::Set {
                    domain,
                    var,
                    object,
                    value,
                }
            ),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn values_round_trip(v in value()) {
            let mut out = Vec::new();
            v.encode(&mut out).expect("encodes");
            let mut c = Cursor::new(&out);
            prop_assert_eq!(Value::decode(&mut c), Ok(v));
            prop_assert!(c.is_empty());
        }

        #[test]
        fn messages_of_requests_round_trip(reqs in proptest::collection::vec(request(), 0..8)) {
            let bytes = encode_requests(&reqs).expect("encodes");
            let cmds = decode_message(&bytes, MESSAGE_BYTES_MAX).expect("decodes");
            let back: Result<Vec<Request>, _> = cmds.into_iter().map(Request::decode).collect();
            prop_assert_eq!(back, Ok(reqs));
        }

        #[test]
        fn commands_of_any_size_round_trip(id in any::<u8>(), content in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut out = Vec::new();
            encode_command(&mut out, id, &content).expect("encodes");
            let mut c = Cursor::new(&out);
            prop_assert_eq!(c.command(), Ok(RawCommand { id, content: &content }));
            prop_assert!(c.is_empty());
        }

        #[test]
        fn get_answers_round_trip(domain in 0xA0u8..=0xAF, var in any::<u8>(), object in latin1(), v in value()) {
            let get = Request::Get { domain, var, object: object.clone() };
            let mut body = Vec::new();
            Status { command: domain, result: 0, description: String::new() }.encode(&mut body).expect("encodes");
            let mut content = vec![var];
            put_string(&mut content, &object).expect("latin1");
            v.encode(&mut content).expect("encodes");
            encode_command(&mut body, domain + 0x10, &content).expect("encodes");
            prop_assert_eq!(decode_responses(&body, &[get]), Ok(vec![Response::Value(v)]));
        }
    }
}
