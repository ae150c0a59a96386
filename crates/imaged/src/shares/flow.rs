//! Who a call's work is for, as the store sees it: the access layer runs
//! each call's handler inside [`scope`] with its [`Caller`], and the store
//! reads [`current`] when it queues a write, so the log can give each uid
//! its fair turn ([`crate::store`]'s log) without every write of every API
//! naming its caller.

use std::future::Future;

use super::Caller;

tokio::task_local! {
    static CALLER: Caller;
}

/// Runs `call` as `caller`'s.
pub fn scope<F: Future>(caller: Caller, call: F) -> tokio::task::futures::TaskLocalFuture<Caller, F> {
    CALLER.scope(caller, call)
}

/// The caller whose call runs now; the daemon itself outside any call.
pub fn current() -> Caller {
    CALLER.try_with(|caller| *caller).unwrap_or(Caller::DAEMON)
}
