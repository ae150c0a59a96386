//! The tower layer in front of every service: it reads the caller's
//! [`Peer`] (set at accept), what the method needs ([`need_of`]) and the
//! namespace the call acts in, and either passes the call on or answers
//! PERMISSION_DENIED itself. A refused call never reaches a handler, so it
//! writes nothing.
//!
//! The policy can be replaced while calls run (SIGHUP): each call reads the
//! current one once.

use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use futures_util::future::Either;
use imaged_types::NamespaceName;
use tonic::Status;
use tonic::codegen::http;

use super::methods::need_of;
use super::{Peer, Policy};
use crate::shares::Caller;
use crate::shares::logs::{RefusalLog, cut};
use crate::transport::context::ReadNamespace;

/// The policy in force, replaceable while the daemon runs, and the log of
/// refusals. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SharedPolicy {
    current: Arc<RwLock<Arc<Policy>>>,
    logs: Arc<RefusalLog>,
}

impl SharedPolicy {
    /// Starts with `policy`.
    pub fn new(policy: Policy) -> SharedPolicy {
        SharedPolicy {
            current: Arc::new(RwLock::new(Arc::new(policy))),
            logs: Arc::default(),
        }
    }

    /// Where every refusal is logged, a token bucket per uid.
    pub fn logs(&self) -> &RefusalLog {
        &self.logs
    }

    /// `peer` as fairness sees it: its uid, and whether it is a built-in
    /// admin (who keeps the reserve of every shared bound).
    pub fn caller(&self, peer: &Peer) -> Caller {
        Caller {
            uid: peer.uid,
            admin: self.current().is_builtin_admin(peer),
        }
    }

    /// The policy in force now.
    pub fn current(&self) -> Arc<Policy> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Puts `policy` in force for every call from now on.
    pub fn replace(&self, policy: Policy) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(policy);
    }

    /// The refusal of `peer`'s call to `path`, or `None` when it may go
    /// on; and the call's namespace as read from `headers`, which the
    /// handler takes over.
    pub fn check(&self, peer: Option<&Peer>, path: &str, headers: &http::HeaderMap) -> (Option<Status>, ReadNamespace) {
        let (need, namespacing, known) = need_of(path);
        let read = ReadNamespace::read(headers, namespacing);
        (self.refusal(peer, path, need, known, read.namespace()), read)
    }

    fn refusal(
        &self,
        peer: Option<&Peer>,
        path: &str,
        need: super::Need,
        known: bool,
        // A namespace the handler would refuse anyway (malformed, twice) is
        // none here: only a grant over every namespace lets such a call on
        // to hear why.
        namespace: Option<&NamespaceName>,
    ) -> Option<Status> {
        let policy = self.current();
        let peer = match peer {
            Some(peer) if policy.allows(peer, need, namespace) => return None,
            Some(peer) => peer,
            None => return Some(Status::permission_denied("the caller's credentials are unknown")),
        };
        // The caller chose the path: it is cut for the message, and an
        // unknown method is logged as one kind, however it is spelled.
        let method = cut(path.trim_start_matches('/'));
        let place = match namespace {
            Some(ns) => format!(" in namespace {ns}"),
            None => String::new(),
        };
        let message = format!(
            "permission denied: uid {} (gid {}) may not call {method}{place}; ask the operator for a {} grant \
             in imaged's access policy",
            peer.uid,
            peer.gid,
            match need.level {
                super::Level::Open | super::Level::Read => "reader",
                super::Level::Write => "writer",
                super::Level::Admin => "admin",
            }
        );
        if let Some(held_back) = self.logs.allow(peer.uid) {
            let logged = if known { &*method } else { "(unknown method)" };
            tracing::warn!(
                uid = peer.uid,
                gid = peer.gid,
                pid = peer.pid,
                method = logged,
                namespace = ?namespace.map(|n| n.as_str()),
                held_back,
                "refused a call"
            );
        }
        Some(Status::permission_denied(message))
    }
}

impl crate::transport::incoming::Admission for SharedPolicy {
    fn caller(&self, peer: &Peer) -> Caller {
        SharedPolicy::caller(self, peer)
    }

    fn may_log(&self, uid: u32) -> Option<u64> {
        self.logs().allow(uid)
    }
}

/// Marks an answer the access layer gave itself: a refusal, as the metrics
/// count it.
#[derive(Debug, Clone, Copy)]
pub struct Refused;

/// The layer that puts [`Access`] in front of the services.
#[derive(Debug, Clone)]
pub struct AccessLayer {
    policy: SharedPolicy,
}

impl AccessLayer {
    /// Applies `policy`.
    pub fn new(policy: SharedPolicy) -> AccessLayer {
        AccessLayer { policy }
    }
}

impl<S> tower::Layer<S> for AccessLayer {
    type Service = Access<S>;

    fn layer(&self, inner: S) -> Access<S> {
        Access {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// The access check around a service.
#[derive(Debug, Clone)]
pub struct Access<S> {
    inner: S,
    policy: SharedPolicy,
}

impl<S, B, R> tower::Service<http::Request<B>> for Access<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    R: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<
        std::future::Ready<Result<S::Response, S::Error>>,
        tokio::task::futures::TaskLocalFuture<Caller, S::Future>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let peer = request.extensions().get::<Peer>();
        let (refusal, namespace) = self.policy.check(peer, request.uri().path(), request.headers());
        match refusal {
            None => {
                // The handler takes the caller's shares by it, and the
                // store gives its writes the caller's turn.
                let caller = match peer {
                    Some(peer) => self.policy.caller(peer),
                    None => Caller::DAEMON,
                };
                request.extensions_mut().insert(caller);
                request.extensions_mut().insert(namespace);
                Either::Right(crate::shares::flow::scope(caller, self.inner.call(request)))
            }
            Some(status) => {
                let mut refusal = status.into_http();
                refusal.extensions_mut().insert(Refused);
                Either::Left(std::future::ready(Ok(refusal)))
            }
        }
    }
}
