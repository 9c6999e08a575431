//! A TCP proxy on loopback that counts the bytes storage sends to its
//! client, so that read amplification is measured the same way for every
//! peer (HTTP headers included, a few hundred bytes per request).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const BUFFER: usize = 256 << 10;
const REPORT_EVERY: Duration = Duration::from_millis(50);

fn pump(mut from: TcpStream, mut to: TcpStream, counter: &AtomicU64) {
    let mut buf = vec![0u8; BUFFER];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(buf.get(..n).unwrap_or_default()).is_err() {
                    break;
                }
                counter.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

pub fn run(listen: &str, upstream: &str, counter_file: &Path) -> Result<(), String> {
    let listener = TcpListener::bind(listen).map_err(|e| format!("listen on {listen}: {e}"))?;
    let down = Arc::new(AtomicU64::new(0));
    let up = Arc::new(AtomicU64::new(0));
    {
        let (down, up) = (down.clone(), up.clone());
        let file = counter_file.to_path_buf();
        let temp = file.with_extension("tmp");
        std::thread::spawn(move || loop {
            let line = format!("{} {}\n", down.load(Ordering::Relaxed), up.load(Ordering::Relaxed));
            // Written aside and renamed, so that a reader never sees half a line.
            if std::fs::write(&temp, line).is_ok() {
                let _ = std::fs::rename(&temp, &file);
            }
            std::thread::sleep(REPORT_EVERY);
        });
    }
    for client in listener.incoming() {
        let Ok(client) = client else { continue };
        let Ok(server) = TcpStream::connect(upstream) else {
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else {
            continue;
        };
        let (down, up) = (down.clone(), up.clone());
        std::thread::spawn(move || pump(server, client, &down));
        std::thread::spawn(move || pump(client2, server2, &up));
    }
    Ok(())
}
