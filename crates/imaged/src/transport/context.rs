//! The request context: what every handler reads from a call once, before
//! anything else: the namespace it acts in, the deadline its caller set, and
//! who the caller is for its fair shares.

use std::time::{Duration, Instant};

use imaged_types::NamespaceName;
use tonic::codegen::http::HeaderMap;
use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

use crate::error::Error;
use crate::shares::Caller;

/// The metadata header that selects a call's namespace.
pub const NAMESPACE_HEADER: &str = "containerd-namespace";

/// Which namespace a call without [`NAMESPACE_HEADER`] acts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Namespacing {
    /// `default`: the seed API.
    DefaultsToDefault,
    /// None: FAILED_PRECONDITION, as containerd's services answer.
    Required,
}

/// What a handler knows about its call.
#[derive(Debug, Clone)]
pub struct Context {
    /// The namespace the call acts in.
    pub namespace: NamespaceName,
    /// When the caller stops waiting (its `grpc-timeout`), if it said.
    pub deadline: Option<Instant>,
    /// Who calls, as the access layer found it.
    pub caller: Caller,
}

/// The namespace header as the access layer read it, handed to the call's
/// handler in the request's extensions, so that a call's header is parsed
/// once.
#[derive(Debug, Clone)]
pub struct ReadNamespace {
    namespacing: Namespacing,
    read: Result<NamespaceName, Status>,
}

impl ReadNamespace {
    /// Reads the namespace of a call to a method that treats a missing
    /// header as `namespacing` says.
    pub fn read(headers: &HeaderMap, namespacing: Namespacing) -> ReadNamespace {
        ReadNamespace {
            namespacing,
            read: namespace(headers, namespacing),
        }
    }

    /// The namespace, unless the header was missing or malformed.
    pub fn namespace(&self) -> Option<&NamespaceName> {
        self.read.as_ref().ok()
    }
}

impl Context {
    /// Reads the context of `request`: its namespace as the access layer
    /// read it, or from its header when no layer did (a request built in
    /// the daemon).
    pub fn of<T>(request: &Request<T>, namespacing: Namespacing) -> Result<Context, Status> {
        let metadata = request.metadata();
        let namespace = match request.extensions().get::<ReadNamespace>() {
            Some(read) if read.namespacing == namespacing => read.read.clone()?,
            _ => namespace(metadata.as_ref(), namespacing)?,
        };
        Ok(Context {
            namespace,
            deadline: deadline(metadata),
            caller: caller(request),
        })
    }

    /// DEADLINE_EXCEEDED once the caller's deadline has passed: checked
    /// between the pages of a long read, so work nobody waits for stops.
    pub fn check_deadline(&self) -> Result<(), Error> {
        match self.deadline {
            Some(deadline) if Instant::now() >= deadline => Err(Error::DeadlineExceeded(
                "the call's deadline (grpc-timeout) passed before the answer was complete".into(),
            )),
            _ => Ok(()),
        }
    }
}

/// Who makes `request`: the [`Caller`] the access layer put in its
/// extensions. Every call on the socket passes that layer, which refuses a
/// peer it cannot identify; a request that never did (built in-process)
/// is the daemon's own.
pub fn caller<T>(request: &Request<T>) -> Caller {
    request.extensions().get::<Caller>().copied().unwrap_or(Caller::DAEMON)
}

/// The call's namespace, from [`NAMESPACE_HEADER`] among its `headers`: the
/// one reading of it, for the handlers and for the access layer alike.
fn namespace(headers: &HeaderMap, namespacing: Namespacing) -> Result<NamespaceName, Status> {
    let mut values = headers.get_all(NAMESPACE_HEADER).iter();
    let Some(value) = values.next() else {
        return match namespacing {
            Namespacing::Required => Err(Status::failed_precondition(format!(
                "namespace is required: set the {NAMESPACE_HEADER} header"
            ))),
            Namespacing::DefaultsToDefault => Ok(NamespaceName::default_namespace()),
        };
    };
    if values.next().is_some() {
        return Err(Status::invalid_argument(format!(
            "{NAMESPACE_HEADER} header given more than once; give one namespace"
        )));
    }
    let value = value
        .to_str()
        .map_err(|_| Status::invalid_argument(format!("invalid {NAMESPACE_HEADER} header: not printable ASCII")))?;
    NamespaceName::parse(NAMESPACE_HEADER, value).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// The deadline a `grpc-timeout` header sets: at most 8 digits and a unit
/// (`H`, `M`, `S`, `m`, `u`, `n`), as gRPC's HTTP/2 protocol defines it.
/// A malformed one is ignored here; tonic's own timeout handling sees it
/// too.
fn deadline(metadata: &MetadataMap) -> Option<Instant> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at_checked(value.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(amount.checked_mul(3600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    };
    Instant::now().checked_add(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(headers: &[(&'static str, &str)], namespacing: Namespacing) -> Result<Context, Status> {
        let mut request = Request::new(());
        for (key, value) in headers {
            request.metadata_mut().append(*key, value.parse().unwrap());
        }
        Context::of(&request, namespacing)
    }

    #[test]
    fn the_namespace_header_is_read_once_with_its_default() {
        let seed = context(&[], Namespacing::DefaultsToDefault).unwrap();
        assert_eq!(seed.namespace.as_str(), "default");
        let err = context(&[], Namespacing::Required).unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        let named = context(&[(NAMESPACE_HEADER, "k8s.io")], Namespacing::Required).unwrap();
        assert_eq!(named.namespace.as_str(), "k8s.io");
        let bad = context(&[(NAMESPACE_HEADER, "-x")], Namespacing::Required).unwrap_err();
        assert_eq!(bad.code(), tonic::Code::InvalidArgument);
        let twice = context(
            &[(NAMESPACE_HEADER, "a"), (NAMESPACE_HEADER, "b")],
            Namespacing::Required,
        )
        .unwrap_err();
        assert_eq!(twice.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn the_access_layers_reading_is_the_one_the_handler_gets() {
        let mut request = Request::new(());
        request
            .metadata_mut()
            .insert(NAMESPACE_HEADER, "k8s.io".parse().unwrap());
        let read = ReadNamespace::read(request.metadata().as_ref(), Namespacing::Required);
        assert_eq!(read.namespace().map(|n| n.as_str()), Some("k8s.io"));
        // What the layer read is what the handler gets, not a second
        // reading of the header (changed here to tell the two apart).
        request.extensions_mut().insert(read);
        request
            .metadata_mut()
            .insert(NAMESPACE_HEADER, "other".parse().unwrap());
        let ctx = Context::of(&request, Namespacing::Required).unwrap();
        assert_eq!(ctx.namespace.as_str(), "k8s.io");
        // A handler whose rule for a missing header differs reads its own.
        let ctx = Context::of(&request, Namespacing::DefaultsToDefault).unwrap();
        assert_eq!(ctx.namespace.as_str(), "other");
    }

    #[test]
    fn grpc_timeout_sets_the_deadline() {
        let within = |value: &str, at_most: Duration| {
            let ctx = context(&[("grpc-timeout", value)], Namespacing::DefaultsToDefault).unwrap();
            let left = ctx.deadline.unwrap().saturating_duration_since(Instant::now());
            assert!(left <= at_most, "{value}: {left:?}");
        };
        within("5S", Duration::from_secs(5));
        within("250m", Duration::from_millis(250));
        within("1H", Duration::from_secs(3600));
        for bad in ["", "S", "123456789S", "5x", "-1S"] {
            let ctx = context(&[("grpc-timeout", bad)], Namespacing::DefaultsToDefault).unwrap();
            assert!(ctx.deadline.is_none(), "{bad:?}");
        }
        let past = context(&[("grpc-timeout", "1n")], Namespacing::DefaultsToDefault).unwrap();
        std::thread::sleep(Duration::from_millis(1));
        assert!(matches!(past.check_deadline(), Err(Error::DeadlineExceeded(_))));
    }
}
