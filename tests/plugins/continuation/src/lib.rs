//! Bench fixture (`host/benches/continuation.rs`): the same decision — build a request to the backend from
//! the client's request, ask, allow when the backend says so — made by a hook that waits on an async host
//! import (`suspending`) and by one that returns the request and is called again with the answer
//! (`stepwise` + `resume`). `pure` makes the decision's checks with no backend, for the baseline.

// The generated code documents itself in the WIT file, and its visibility is wit-bindgen's.
#![allow(missing_docs, unreachable_pub)]

wit_bindgen::generate!({
    path: "wit",
    world: "bench",
});

use herald_bench::continuation::backend;

/// What the backend answers to allow.
const ALLOWED: &[u8] = br#"{"result":{"user":"#;

/// The proxy request the backend is sent: the client's request wrapped as Centrifugo's proxies do.
fn proxy_body(request: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(request.len() + 32);
    body.extend_from_slice(br#"{"client":"c1","transport":"websocket","data":"#);
    body.extend_from_slice(request);
    body.push(b'}');
    body
}

fn allowed(answer: &[u8]) -> bool {
    answer.starts_with(ALLOWED)
}

struct Bench;

impl Guest for Bench {
    fn pure(request: Vec<u8>) -> bool {
        // The same request built, decided without asking anyone.
        proxy_body(&request).starts_with(br#"{"client""#)
    }

    fn suspending(request: Vec<u8>) -> bool {
        allowed(&backend::fetch(&proxy_body(&request)))
    }

    fn stepwise(request: Vec<u8>) -> Step {
        Step::Fetch(proxy_body(&request))
    }

    fn resume(request: Vec<u8>, answer: Vec<u8>) -> bool {
        // A continuation starts over from what it is given: whatever the first call worked out about the
        // request is worked out again (here: nothing but its length).
        !request.is_empty() && allowed(&answer)
    }
}

export!(Bench);
