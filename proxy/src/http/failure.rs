//! [`Failure`]: every way a request can fail once its head was read, and
//! the four answers each one has — the status the client gets, the label
//! it is counted under, whose fault it is (the log level), and whether the
//! request may be sent again — in one place, the way Pingora's own
//! `ErrorType` carries its retry flag and linkerd2-proxy's errors carry
//! their response. The request path ([`super::forward`],
//! [`super::tunnel`]) makes a [`Failed`] where something goes wrong and
//! asks it; nothing else matches error strings.
//!
//! Start at [`Failure`].

use pingora_core::{Error as PingoraError, ErrorType};

/// Whose fault a failure is; it decides the log level (docs/contract.md
/// §7): the VM's is WARN (and counted in `upstream_errors_total`), the
/// client's DEBUG (counted in `log_events_total{event="client_error"}`),
/// the edge's own ERROR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Vm,
    Client,
    Edge,
}

/// May the request be sent again after this failure?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Nothing reached the VM: a repl being placed may move to another VM
    /// of its cluster (`balancer.connect_retries`).
    Elsewhere,
    /// A pooled connection the VM had closed: the same VM, on a new
    /// connection (an idempotent request whose body is held, once).
    FreshConnection,
    No,
}

/// Every failure of the request path after the head was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The VM or peer edge refused the connection.
    ConnectRefused,
    /// It did not accept within `limits.upstream_connect_timeout_ms`.
    ConnectTimeout,
    /// Any other connect failure (no route, address unusable).
    ConnectError,
    /// A fresh connection was reset or closed before any byte of an answer.
    ResetBeforeAnswer,
    /// A pooled connection turned out closed before any answer: the race
    /// every keep-alive pool has (the VM closed it as it was reused).
    PooledConnectionClosed,
    /// No answer, or no next piece of one, within
    /// `limits.upstream_read_timeout_ms`.
    AnswerTimeout,
    /// An answer the edge cannot read as HTTP/1.1 (a bad head or chunk,
    /// a `101` to a request that is not an upgrade).
    BadAnswer,
    /// The answer had begun reaching the client when the VM failed: the
    /// client connection is closed, nothing more can be said.
    AnswerCutShort,
    /// The client's body stalled past `limits.body_timeout_ms`.
    ClientTimeout,
    /// The client went away (closed or reset) mid-request.
    ClientGone,
    /// The client's body was malformed (a bad chunk).
    ClientMalformed,
    /// The client's body passed `limits.max_body_bytes`.
    BodyTooLarge,
    /// The edge itself failed (a bug, an impossible state).
    Internal,
}

impl Failure {
    pub const ALL: [Failure; 13] = [
        Failure::ConnectRefused,
        Failure::ConnectTimeout,
        Failure::ConnectError,
        Failure::ResetBeforeAnswer,
        Failure::PooledConnectionClosed,
        Failure::AnswerTimeout,
        Failure::BadAnswer,
        Failure::AnswerCutShort,
        Failure::ClientTimeout,
        Failure::ClientGone,
        Failure::ClientMalformed,
        Failure::BodyTooLarge,
        Failure::Internal,
    ];

    /// The status the client gets; 0 when nothing can be answered (the
    /// client is gone, or part of the VM's answer went out already).
    pub fn status(self) -> u16 {
        match self {
            Failure::ConnectRefused
            | Failure::ConnectError
            | Failure::ResetBeforeAnswer
            | Failure::PooledConnectionClosed
            | Failure::BadAnswer => 502,
            Failure::ConnectTimeout | Failure::AnswerTimeout => 504,
            Failure::AnswerCutShort | Failure::ClientGone => 0,
            Failure::ClientTimeout => 408,
            Failure::ClientMalformed => 400,
            Failure::BodyTooLarge => 413,
            Failure::Internal => 500,
        }
    }

    /// The label it is counted under: `upstream_errors_total{reason}` for
    /// the VM's faults, the access log's and `log_events_total`'s words for
    /// the others.
    pub fn label(self) -> &'static str {
        match self {
            Failure::ConnectRefused => "connect_refused",
            Failure::ConnectTimeout => "connect_timeout",
            Failure::ConnectError => "connect_error",
            Failure::ResetBeforeAnswer => "connect_reset",
            Failure::PooledConnectionClosed => "pool_reuse_race",
            Failure::AnswerTimeout => "timeout",
            Failure::BadAnswer => "upstream",
            Failure::AnswerCutShort => "mid_answer",
            Failure::ClientTimeout => "client_timeout",
            Failure::ClientGone => "downstream_closed",
            Failure::ClientMalformed => "downstream",
            Failure::BodyTooLarge => "body_too_large",
            Failure::Internal => "internal",
        }
    }

    pub fn fault(self) -> Fault {
        match self {
            Failure::ConnectRefused
            | Failure::ConnectTimeout
            | Failure::ConnectError
            | Failure::ResetBeforeAnswer
            | Failure::PooledConnectionClosed
            | Failure::AnswerTimeout
            | Failure::BadAnswer
            | Failure::AnswerCutShort => Fault::Vm,
            Failure::ClientTimeout | Failure::ClientGone | Failure::ClientMalformed | Failure::BodyTooLarge => {
                Fault::Client
            }
            Failure::Internal => Fault::Edge,
        }
    }

    /// The log level of its line.
    pub fn level(self) -> log::Level {
        match self.fault() {
            // A pooled connection's race is nobody's fault: counted only.
            Fault::Vm if self == Failure::PooledConnectionClosed => log::Level::Debug,
            Fault::Vm => log::Level::Warn,
            Fault::Client => log::Level::Debug,
            Fault::Edge => log::Level::Error,
        }
    }

    pub fn retry(self) -> Retry {
        match self {
            Failure::ConnectRefused | Failure::ConnectTimeout | Failure::ConnectError | Failure::ResetBeforeAnswer => {
                Retry::Elsewhere
            }
            Failure::PooledConnectionClosed => Retry::FreshConnection,
            _ => Retry::No,
        }
    }

    /// The VM could not be reached at all: counts towards its passive
    /// ejection (`balancer.eject_after_failures`).
    pub fn unreachable(self) -> bool {
        matches!(
            self,
            Failure::ConnectRefused | Failure::ConnectTimeout | Failure::ConnectError
        )
    }

    /// A connect failure of `e`.
    pub fn of_connect(e: &std::io::Error) -> Failure {
        match e.kind() {
            std::io::ErrorKind::ConnectionRefused => Failure::ConnectRefused,
            std::io::ErrorKind::TimedOut => Failure::ConnectTimeout,
            _ => Failure::ConnectError,
        }
    }

    /// A failure reading from or writing to the VM, `answered` telling
    /// whether any byte of its answer had arrived, `pooled` whether the
    /// connection came from the pool.
    pub fn of_vm_io(e: &std::io::Error, answered: bool, pooled: bool) -> Failure {
        use std::io::ErrorKind::*;
        if e.kind() == TimedOut {
            return Failure::AnswerTimeout;
        }
        let reset = matches!(
            e.kind(),
            ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
        );
        match (reset, answered, pooled) {
            (true, false, true) => Failure::PooledConnectionClosed,
            (true, false, false) => Failure::ResetBeforeAnswer,
            _ => Failure::BadAnswer,
        }
    }

    /// A failure of Pingora's downstream session (reading the client's
    /// body, writing the answer to it).
    pub fn of_client(e: &PingoraError) -> Failure {
        match e.etype() {
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => Failure::ClientTimeout,
            ErrorType::HTTPStatus(413) => Failure::BodyTooLarge,
            ErrorType::InvalidHTTPHeader | ErrorType::HTTPStatus(400) | ErrorType::H2Error => Failure::ClientMalformed,
            ErrorType::InternalError => Failure::Internal,
            _ => Failure::ClientGone,
        }
    }
}

/// A failure with what the log line says about it.
#[derive(Debug)]
pub struct Failed {
    pub kind: Failure,
    pub detail: String,
}

impl Failed {
    pub fn new(kind: Failure, detail: impl std::fmt::Display) -> Failed {
        Failed {
            kind,
            detail: detail.to_string(),
        }
    }

    /// A client-side failure of Pingora's session.
    pub fn client(e: &PingoraError) -> Failed {
        Failed::new(Failure::of_client(e), e)
    }
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.label(), self.detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each variant's four answers, as the runbook and the metrics promise.
    #[test]
    fn every_failure_has_its_status_label_fault_and_retry() {
        use Failure::*;
        use Retry::*;
        let table = [
            (ConnectRefused, 502, "connect_refused", Fault::Vm, Elsewhere),
            (ConnectTimeout, 504, "connect_timeout", Fault::Vm, Elsewhere),
            (ConnectError, 502, "connect_error", Fault::Vm, Elsewhere),
            (ResetBeforeAnswer, 502, "connect_reset", Fault::Vm, Elsewhere),
            (
                PooledConnectionClosed,
                502,
                "pool_reuse_race",
                Fault::Vm,
                FreshConnection,
            ),
            (AnswerTimeout, 504, "timeout", Fault::Vm, No),
            (BadAnswer, 502, "upstream", Fault::Vm, No),
            (AnswerCutShort, 0, "mid_answer", Fault::Vm, No),
            (ClientTimeout, 408, "client_timeout", Fault::Client, No),
            (ClientGone, 0, "downstream_closed", Fault::Client, No),
            (ClientMalformed, 400, "downstream", Fault::Client, No),
            (BodyTooLarge, 413, "body_too_large", Fault::Client, No),
            (Internal, 500, "internal", Fault::Edge, No),
        ];
        assert_eq!(table.len(), Failure::ALL.len(), "every variant is in the table");
        for (f, status, label, fault, retry) in table {
            assert_eq!(
                (f.status(), f.label(), f.fault(), f.retry()),
                (status, label, fault, retry),
                "{f:?}"
            );
            let level = match fault {
                Fault::Vm if f == PooledConnectionClosed => log::Level::Debug,
                Fault::Vm => log::Level::Warn,
                Fault::Client => log::Level::Debug,
                Fault::Edge => log::Level::Error,
            };
            assert_eq!(f.level(), level, "{f:?}");
        }
        let labels: std::collections::HashSet<_> = Failure::ALL.iter().map(|f| f.label()).collect();
        assert_eq!(labels.len(), Failure::ALL.len(), "labels are distinct");
        assert!(ConnectRefused.unreachable() && ConnectTimeout.unreachable() && ConnectError.unreachable());
        assert!(!ResetBeforeAnswer.unreachable() && !AnswerTimeout.unreachable());
    }

    #[test]
    fn io_errors_map_by_when_they_happened() {
        use std::io::{Error, ErrorKind};
        let reset = Error::from(ErrorKind::ConnectionReset);
        assert_eq!(Failure::of_vm_io(&reset, false, false), Failure::ResetBeforeAnswer);
        assert_eq!(Failure::of_vm_io(&reset, false, true), Failure::PooledConnectionClosed);
        assert_eq!(Failure::of_vm_io(&reset, true, false), Failure::BadAnswer);
        assert_eq!(
            Failure::of_vm_io(&Error::from(ErrorKind::TimedOut), false, true),
            Failure::AnswerTimeout
        );
        assert_eq!(
            Failure::of_connect(&Error::from(ErrorKind::ConnectionRefused)),
            Failure::ConnectRefused
        );
        assert_eq!(
            Failure::of_connect(&Error::from(ErrorKind::PermissionDenied)),
            Failure::ConnectError
        );
        let slow = PingoraError::explain(ErrorType::ReadTimedout, "slow body");
        assert_eq!(Failure::of_client(&slow), Failure::ClientTimeout);
        let big = PingoraError::explain(ErrorType::HTTPStatus(413), "big");
        assert_eq!(Failure::of_client(&big), Failure::BodyTooLarge);
        let gone = PingoraError::explain(ErrorType::ConnectionClosed, "gone");
        assert_eq!(Failure::of_client(&gone), Failure::ClientGone);
    }
}
