//! Requests to the deployment's backend (`herald:plugin/http`, from contract 0.2), made by Herald while
//! the plugin's instance waits suspended — no thread is held, other connections carry on.
//!
//! Herald lets a plugin reach only the URL prefixes its configuration allows (`[plugins.http.<name>]`,
//! nothing by default), within its timeout, response size and concurrency limits, and within what is left
//! of the hook's deadline (so give a plugin that asks its backend a deadline that covers the backend:
//! `plugins.limits.<name>.deadline`). Every failure is an [`Error`] the plugin turns into its decision;
//! failing closed (deny) is the safe answer.
//!
//! Outside WebAssembly (`cargo test`) requests go to a stub the test installs with [`stub`], so plugin
//! logic that asks a backend unit-tests without one:
//!
//! ```
//! use herald_sdk::http::{self, Request, Response};
//!
//! http::stub(|request| {
//!     assert_eq!(request.url, "https://backend.internal/auth");
//!     Ok(Response::json(200, r#"{"user":"42"}"#))
//! });
//! let response = http::fetch(&Request::post("https://backend.internal/auth", "{}")).unwrap();
//! assert_eq!((response.status, response.body_text()), (200, r#"{"user":"42"}"#.to_owned()));
//! ```

pub use crate::bindings::herald::plugin::http::{Error, Request, Response};

impl Request {
    /// A `GET` of `url`, without headers.
    pub fn get(url: impl Into<String>) -> Self {
        Self {
            method: "GET".into(),
            url: url.into(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A `POST` of `body` to `url`, as `application/json`.
    pub fn post(url: impl Into<String>, body: impl Into<Vec<u8>>) -> Self {
        Self {
            method: "POST".into(),
            url: url.into(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.into(),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

impl Response {
    /// A response with a JSON body (for stubs).
    pub fn json(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.into(),
        }
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `request` and waits for the whole response.
pub fn fetch(request: &Request) -> Result<Response, Error> {
    imp::fetch(request)
}

/// Answers this thread's [`fetch`]es with `handler` (native builds only; tests).
#[cfg(not(target_arch = "wasm32"))]
pub fn stub(handler: impl Fn(&Request) -> Result<Response, Error> + 'static) {
    imp::STUB.with_borrow_mut(|stub| *stub = Some(Box::new(handler)));
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::{Error, Request, Response};

    pub(super) fn fetch(request: &Request) -> Result<Response, Error> {
        crate::bindings::herald::plugin::http::fetch(request)
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use std::cell::RefCell;

    use super::{Error, Request, Response};

    type Handler = Box<dyn Fn(&Request) -> Result<Response, Error>>;

    thread_local! {
        pub(super) static STUB: RefCell<Option<Handler>> = const { RefCell::new(None) };
    }

    pub(super) fn fetch(request: &Request) -> Result<Response, Error> {
        STUB.with_borrow(|stub| match stub {
            Some(handler) => handler(request),
            None => Err(Error::Unavailable(
                "no backend stubbed (herald_sdk::http::stub)".into(),
            )),
        })
    }
}
