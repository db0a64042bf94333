//! One TraCI connection over TCP. It owns the socket and nothing else: every byte goes
//! through [`super::codec`], and every wait is bounded by the configured I/O timeout.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::codec::{self, DecodeError, Request, Response, Value, id};
use super::source::SourceError;
use crate::detector::DetectorKind;

/// A connection to SUMO's TraCI server.
#[derive(Debug)]
pub struct TraciClient {
    stream: TcpStream,
    addr: SocketAddr,
    io_timeout: Duration,
    max_message_bytes: usize,
}

impl TraciClient {
    /// Connects to `addr` (one attempt) and sets `TCP_NODELAY`: every request waits for its
    /// answer, so Nagle's algorithm would only add delay.
    ///
    /// # Errors
    ///
    /// [`SourceError::Connect`] if the connection is refused or times out.
    pub async fn connect(
        addr: SocketAddr,
        io_timeout: Duration,
        max_message_bytes: usize,
    ) -> Result<Self, SourceError> {
        let stream = match tokio::time::timeout(io_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(SourceError::Connect { addr, source }),
            Err(_) => {
                return Err(SourceError::Connect {
                    addr,
                    source: std::io::ErrorKind::TimedOut.into(),
                });
            }
        };
        stream
            .set_nodelay(true)
            .map_err(|source| SourceError::Connect { addr, source })?;
        Ok(Self {
            stream,
            addr,
            io_timeout,
            max_message_bytes,
        })
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends `requests` as one message and decodes the one answer.
    ///
    /// # Errors
    ///
    /// [`SourceError`]: the connection failed or timed out, SUMO refused a command, or the
    /// answer is malformed.
    pub async fn request(
        &mut self,
        during: &'static str,
        requests: &[Request],
    ) -> Result<Vec<Response>, SourceError> {
        let bytes = codec::encode_requests(requests).map_err(SourceError::Encode)?;
        self.exchange(during, &bytes, requests).await
    }

    /// Sends an already encoded message answering to `requests`.
    async fn exchange(
        &mut self,
        during: &'static str,
        message: &[u8],
        requests: &[Request],
    ) -> Result<Vec<Response>, SourceError> {
        let (addr, timeout) = (self.addr, self.io_timeout);
        let stream = &mut self.stream;
        let mut header = [0u8; 4];
        timed(addr, timeout, during, async {
            stream.write_all(message).await?;
            stream.read_exact(&mut header).await.map(drop)
        })
        .await?;
        let protocol = |source: codec::ResponseError| SourceError::Protocol {
            addr,
            during,
            source,
        };
        let len =
            codec::body_len(header, self.max_message_bytes).map_err(|e| protocol(e.into()))?;
        let mut body = vec![0u8; len];
        timed(addr, timeout, during, stream.read_exact(&mut body)).await?;
        codec::decode_responses(&body, requests).map_err(protocol)
    }

    /// getVersion: the TraCI API version and SUMO's name.
    ///
    /// # Errors
    ///
    /// [`SourceError`] as for [`TraciClient::request`].
    pub async fn get_version(&mut self) -> Result<(i32, String), SourceError> {
        match self
            .request("asking for the version", &[Request::GetVersion])
            .await?
            .pop()
        {
            Some(Response::Version { api, software }) => Ok((api, software)),
            other => Err(self.unexpected("asking for the version", "a version", other)),
        }
    }

    /// setOrder: this client's place among the clients stepping the simulation.
    ///
    /// # Errors
    ///
    /// [`SourceError`] as for [`TraciClient::request`].
    pub async fn set_order(&mut self, order: i32) -> Result<(), SourceError> {
        self.request("setting the client order", &[Request::SetOrder(order)])
            .await
            .map(drop)
    }

    /// simulationStep to `target_s` seconds (0: one step). With several clients SUMO answers
    /// once every client has asked for the step.
    ///
    /// # Errors
    ///
    /// [`SourceError`] as for [`TraciClient::request`].
    pub async fn simulation_step(&mut self, target_s: f64) -> Result<(), SourceError> {
        self.request("stepping", &[Request::SimulationStep { target_s }])
            .await
            .map(drop)
    }

    /// The ids of every object of a get domain (e.g. 0xA0 induction loops).
    ///
    /// # Errors
    ///
    /// [`SourceError`] as for [`TraciClient::request`].
    pub async fn id_list(&mut self, domain: u8) -> Result<Vec<String>, SourceError> {
        let req = Request::Get {
            domain,
            var: id::TRACI_ID_LIST,
            object: String::new(),
        };
        match self
            .request("listing detectors", std::slice::from_ref(&req))
            .await?
            .pop()
        {
            Some(Response::Value(Value::StringList(ids))) => Ok(ids),
            other => Err(self.unexpected("listing detectors", "a string list", other)),
        }
    }

    /// Sets traffic light `tls` to phase `phase` (0xC2 / 0x22), the command a controlling node
    /// sends between steps.
    ///
    /// # Errors
    ///
    /// [`SourceError`] as for [`TraciClient::request`]; SUMO refuses an unknown light or
    /// phase.
    pub async fn set_phase(&mut self, tls: &str, phase: i32) -> Result<(), SourceError> {
        let req = Request::Set {
            domain: id::CMD_SET_TL_VARIABLE,
            var: id::TL_PHASE_INDEX,
            object: tls.to_owned(),
            value: Value::Int(phase),
        };
        self.request("setting a phase", &[req]).await.map(drop)
    }

    /// Reads every detector of `plan` and the simulation's time and expected vehicles, in one
    /// message.
    ///
    /// # Errors
    ///
    /// [`SourceError`] as for [`TraciClient::request`].
    pub async fn read(&mut self, plan: &ReadPlan) -> Result<StepSample, SourceError> {
        let during = "reading detectors";
        let responses = self.exchange(during, &plan.message, &plan.requests).await?;
        plan.decode(responses).map_err(|e| SourceError::Protocol {
            addr: self.addr,
            during,
            source: e.into(),
        })
    }

    /// close: ends this client's connection (SUMO goes on with the other clients, and ends
    /// when the last one closes).
    ///
    /// # Errors
    ///
    /// [`SourceError`] as for [`TraciClient::request`].
    pub async fn close(mut self) -> Result<(), SourceError> {
        self.request("closing", &[Request::Close]).await?;
        // SUMO closes its end after the answer; a failed shutdown of ours changes nothing.
        let _ = timed(
            self.addr,
            self.io_timeout,
            "closing",
            self.stream.shutdown(),
        )
        .await;
        Ok(())
    }

    fn unexpected(
        &self,
        during: &'static str,
        expected: &str,
        got: Option<Response>,
    ) -> SourceError {
        SourceError::Protocol {
            addr: self.addr,
            during,
            source: DecodeError::Unexpected {
                what: "answer",
                expected: expected.into(),
                got: format!("{got:?}"),
            }
            .into(),
        }
    }
}

/// Runs `f` within `timeout`, mapping an I/O error to [`SourceError::Disconnected`] and the
/// timeout to [`SourceError::Timeout`].
async fn timed<T>(
    addr: SocketAddr,
    timeout: Duration,
    during: &'static str,
    f: impl Future<Output = std::io::Result<T>>,
) -> Result<T, SourceError> {
    match tokio::time::timeout(timeout, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(SourceError::Disconnected {
            addr,
            during,
            source,
        }),
        Err(_) => Err(SourceError::Timeout {
            addr,
            during,
            ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        }),
    }
}

/// What one detector showed in the last step.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DetectorSample {
    /// Vehicles on the detector during the last step (0x12).
    pub vehicle_ids: Vec<String>,
    /// Occupancy in percent (0x13).
    pub occupancy: f64,
    /// Mean speed in m/s, -1 with no vehicle (0x11).
    pub mean_speed: f64,
    /// Jam length in vehicles (0x18; E2 only, 0 for E1).
    pub jam_vehicles: f64,
}

/// One step's reads: the detectors in the plan's order, and the simulation's state.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StepSample {
    /// Simulation time in seconds (0x66).
    pub time_s: f64,
    /// Vehicles running or still to depart (0x7D); 0 means the simulation is over.
    pub min_expected: i32,
    /// One sample per detector, in [`ReadPlan::detectors`] order.
    pub detectors: Vec<DetectorSample>,
}

/// The reads of one step for a fixed set of detectors, encoded once. Pure: the requests, the
/// encoded message, and the decoding of the answer into a [`StepSample`].
#[derive(Debug, Clone)]
pub struct ReadPlan {
    detectors: Vec<(String, DetectorKind)>,
    requests: Vec<Request>,
    message: Vec<u8>,
}

const E1_VARS: [u8; 3] = [
    id::LAST_STEP_VEHICLE_ID_LIST,
    id::LAST_STEP_OCCUPANCY,
    id::LAST_STEP_MEAN_SPEED,
];
const E2_VARS: [u8; 4] = [
    id::LAST_STEP_VEHICLE_ID_LIST,
    id::LAST_STEP_OCCUPANCY,
    id::LAST_STEP_MEAN_SPEED,
    id::JAM_LENGTH_VEHICLE,
];

impl ReadPlan {
    /// A plan reading `detectors` (E1 from domain 0xA0, E2 from 0xAD), then the time and the
    /// expected vehicles.
    ///
    /// # Errors
    ///
    /// [`codec::EncodeError`] if an id is not Latin-1.
    pub fn new(detectors: Vec<(String, DetectorKind)>) -> Result<Self, codec::EncodeError> {
        let mut requests = Vec::new();
        for (det, kind) in &detectors {
            let (domain, vars): (u8, &[u8]) = match kind {
                DetectorKind::E1 => (id::CMD_GET_INDUCTIONLOOP_VARIABLE, &E1_VARS),
                DetectorKind::E2 => (id::CMD_GET_LANEAREA_VARIABLE, &E2_VARS),
            };
            for &var in vars {
                requests.push(Request::Get {
                    domain,
                    var,
                    object: det.clone(),
                });
            }
        }
        for var in [id::VAR_TIME, id::VAR_MIN_EXPECTED_VEHICLES] {
            requests.push(Request::Get {
                domain: id::CMD_GET_SIM_VARIABLE,
                var,
                object: String::new(),
            });
        }
        let message = codec::encode_requests(&requests)?;
        Ok(Self {
            detectors,
            requests,
            message,
        })
    }

    /// The detectors read, in order.
    pub fn detectors(&self) -> &[(String, DetectorKind)] {
        &self.detectors
    }

    /// The requests of one step, in order.
    pub fn requests(&self) -> &[Request] {
        &self.requests
    }

    /// The encoded message.
    pub fn message(&self) -> &[u8] {
        &self.message
    }

    /// Turns the answers to [`ReadPlan::requests`] into a sample.
    ///
    /// # Errors
    ///
    /// [`DecodeError::Unexpected`] if an answer has the wrong count or type.
    pub fn decode(&self, responses: Vec<Response>) -> Result<StepSample, DecodeError> {
        if responses.len() != self.requests.len() {
            return Err(DecodeError::Unexpected {
                what: "number of answers",
                expected: self.requests.len().to_string(),
                got: responses.len().to_string(),
            });
        }
        let mut it = responses.into_iter();
        let mut next = || it.next().unwrap_or(Response::Ok);
        let mut sample = StepSample::default();
        for (_, kind) in &self.detectors {
            let vehicle_ids = match next() {
                Response::Value(Value::StringList(ids)) => ids,
                other => return Err(wrong("vehicle ids", "string list", &other)),
            };
            let occupancy = double(next(), "occupancy")?;
            let mean_speed = double(next(), "mean speed")?;
            let jam_vehicles = match kind {
                DetectorKind::E1 => 0.0,
                DetectorKind::E2 => match next() {
                    Response::Value(Value::Int(n)) => f64::from(n),
                    other => return Err(wrong("jam length", "int", &other)),
                },
            };
            sample.detectors.push(DetectorSample {
                vehicle_ids,
                occupancy,
                mean_speed,
                jam_vehicles,
            });
        }
        sample.time_s = double(next(), "simulation time")?;
        sample.min_expected = match next() {
            Response::Value(Value::Int(n)) => n,
            other => return Err(wrong("expected vehicles", "int", &other)),
        };
        Ok(sample)
    }
}

fn double(r: Response, what: &'static str) -> Result<f64, DecodeError> {
    match r {
        Response::Value(Value::Double(v)) => Ok(v),
        other => Err(wrong(what, "double", &other)),
    }
}

fn wrong(what: &'static str, expected: &str, got: &Response) -> DecodeError {
    DecodeError::Unexpected {
        what,
        expected: expected.into(),
        got: match got {
            Response::Value(v) => v.type_name().into(),
            other => format!("{other:?}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_reads_every_detector_in_one_message_and_decodes_the_answers() {
        let plan = ReadPlan::new(vec![
            ("e1_A1_A0A1_0".into(), DetectorKind::E1),
            ("e2_A1_A0A1_0".into(), DetectorKind::E2),
        ])
        .expect("latin1");
        assert_eq!(plan.requests().len(), 3 + 4 + 2);
        let cmds = codec::decode_message(plan.message(), codec::MESSAGE_BYTES_MAX).expect("one");
        assert_eq!(cmds.len(), 9);
        assert_eq!(cmds[0].id, 0xA0);
        assert_eq!(cmds[3].id, 0xAD);
        assert_eq!(cmds[6].content[0], id::JAM_LENGTH_VEHICLE);
        assert_eq!(cmds[8].id, 0xAB);
        let v = |v: Value| Response::Value(v);
        let answers = vec![
            v(Value::StringList(vec!["veh1".into()])),
            v(Value::Double(40.0)),
            v(Value::Double(5.5)),
            v(Value::StringList(vec![])),
            v(Value::Double(0.0)),
            v(Value::Double(-1.0)),
            v(Value::Int(3)),
            v(Value::Double(12.0)),
            v(Value::Int(150)),
        ];
        let s = plan.decode(answers.clone()).expect("decodes");
        assert_eq!(s.time_s, 12.0);
        assert_eq!(s.min_expected, 150);
        assert_eq!(s.detectors[0].vehicle_ids, vec!["veh1".to_string()]);
        assert_eq!(s.detectors[0].jam_vehicles, 0.0);
        assert_eq!(s.detectors[1].jam_vehicles, 3.0);
        let mut bad = answers.clone();
        bad[1] = v(Value::Int(1));
        assert!(matches!(
            plan.decode(bad),
            Err(DecodeError::Unexpected {
                what: "occupancy",
                ..
            })
        ));
        assert!(plan.decode(answers[..8].to_vec()).is_err());
    }
}
