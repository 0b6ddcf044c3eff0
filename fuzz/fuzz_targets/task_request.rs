//! Task requests as JSON from the task API and from other hosts (seed
//! triggers).
//!
//! Invariants: no panic; a request that validates has a well-formed task
//! id; what `for_network` keeps is never refused for its headers or an
//! output file; JSON round trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use node_agent::task_id::is_valid_task_id;
use node_agent::task_request::{NetworkRequestError, TaskRequest};

fuzz_target!(|data: &[u8]| {
    let Ok(request) = serde_json::from_slice::<TaskRequest>(data) else {
        return;
    };
    let validated = request.validate();
    let own = request.own_task_id();
    if let Ok(id) = &validated {
        assert!(is_valid_task_id(id), "validate() gave task id {id:?}");
        let own = own
            .as_ref()
            .expect("validated request without its own task id");
        assert!(is_valid_task_id(own), "own task id {own:?}");
        assert_eq!(request.task_id().ok().as_ref(), Some(id));
    }
    let from_network = request.check_from_network();
    if request.output.is_some() {
        assert_eq!(from_network, Err(NetworkRequestError::Output));
    }
    if from_network.is_ok() {
        // Accepted from the network: its id is its own.
        assert_eq!(request.task_id().ok(), own.as_ref().ok().cloned());
    }
    let network = request.for_network();
    assert!(network.output.is_none());
    assert!(network.headers.len() <= request.headers.len());
    match network.check_from_network() {
        Err(NetworkRequestError::Header(name)) => {
            panic!("for_network() kept header {name:?} that check_from_network refuses")
        }
        Err(NetworkRequestError::Output) => panic!("for_network() kept the output"),
        _ => {}
    }
    // The request only loses what the network may not send.
    assert_eq!(network.url, request.url);
    assert_eq!(network.digest, request.digest);
    assert_eq!(network.task_id, request.task_id);
    assert_eq!(network.for_network(), network);

    let json = serde_json::to_vec(&request).expect("serialising a task request");
    let back: TaskRequest = serde_json::from_slice(&json).expect("re-reading a serialised request");
    assert_eq!(back, request);
});
