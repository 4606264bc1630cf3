//! A proxy in front of the run's Postgres, for the tests of a Postgres that stops answering.

use std::net::TcpStream;

/// A TCP proxy in front of the run's Postgres that can turn into a black hole: it then accepts
/// connections and never answers, as a host that vanished or a network that drops packets does
/// (a failure that times out instead of being refused).
pub struct PgProxy {
    pub port: u16,
    blackhole: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl PgProxy {
    pub fn start() -> PgProxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let blackhole = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (hole, conns) = (blackhole.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let keep = client.try_clone().expect("clone socket");
                conns.lock().unwrap().push(keep);
                if hole.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", 5432)) else {
                    continue;
                };
                conns
                    .lock()
                    .unwrap()
                    .push(server.try_clone().expect("clone socket"));
                let (mut c_in, mut s_out) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (mut s_in, mut c_out) = (server, client);
                std::thread::spawn(move || std::io::copy(&mut c_in, &mut s_out));
                std::thread::spawn(move || std::io::copy(&mut s_in, &mut c_out));
            }
        });
        PgProxy {
            port,
            blackhole,
            open,
        }
    }

    /// `url` with its host and port replaced by the proxy's.
    pub fn url_for(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").expect("URL with a scheme");
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let user = authority
            .rsplit_once('@')
            .map(|(u, _)| format!("{u}@"))
            .unwrap_or_default();
        format!("{scheme}://{user}127.0.0.1:{}/{path}", self.port)
    }

    /// From now on, connections are accepted and never answered; the open ones are cut.
    pub fn blackhole(&self) {
        self.blackhole
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for conn in self.open.lock().unwrap().drain(..) {
            let _ = conn.shutdown(std::net::Shutdown::Both);
        }
    }
}
