//! `Type=notify` readiness: seqd sends READY=1 to $NOTIFY_SOCKET once it listens, and
//! STOPPING=1 when it shuts down. The test binds the datagram socket a service manager would.
//! (Its own test binary: it sets NOTIFY_SOCKET for the seqd it starts.)

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use common::SeqdProcess;

fn next_message(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let len = socket.recv(&mut buf).expect("no notification from seqd");
    String::from_utf8_lossy(&buf[..len]).into_owned()
}

#[test]
fn ready_once_listening_and_stopping_on_sigterm() {
    let dir = common::temp_dir();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // SAFETY: this test binary has this one test, and sets the variable before any thread
    // of its own reads the environment.
    unsafe { std::env::set_var("NOTIFY_SOCKET", &path) };
    let mut server = SeqdProcess::start(&[]);
    assert!(next_message(&socket).contains("READY=1"));
    // Ready means served.
    server.client().get().unwrap();
    server.signal(libc::SIGTERM);
    assert!(next_message(&socket).contains("STOPPING=1"));
    assert!(server.wait().success());
}
