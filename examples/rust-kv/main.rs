//! rust-kv - an example guest written with Rust std only (rustc 1.63,
//! wasm32-wasi), showing that a Rust program runs unmodified under Lockstep.
//!
//! It takes its listening socket as fd 3 (`TcpListener::from_raw_fd(3)`;
//! WASI preview1 cannot create sockets), serves one connection at a time
//! from a single thread, and keeps a key-value map that survives restarts
//! through an append-only log in its data folder.
//!
//! Protocol: text lines (LF or CRLF), one reply line per request.
//!   SET <key> <value>   -> OK          (value: the rest of the line, may
//!                                       contain spaces; key: no blanks)
//!   GET <key>           -> VALUE <value>  or  NIL
//!   DEL <key>           -> DELETED 1  or  DELETED 0
//!   COUNT               -> COUNT <n>
//!   QUIT                -> BYE, then the connection is closed
//!   anything else       -> ERR <reason>
//!
//! Persistence: every SET and DEL is appended to `<dir>/rust-kv.log` as
//! the request line and synced (`File::sync_data`, i.e. fd_datasync) before
//! the reply is sent. At start the log is replayed; a last line without its
//! newline (a torn write) is ignored and cut off. `<dir>` is `/data`, or
//! RUST_KV_DIR from the environment.
//!
//! Rust 1.63 std on wasm32-wasi notes (worked around with std only):
//!   - `TcpStream::set_nonblocking`, `peer_addr` and timeouts are not
//!     supported on WASI, so the server is blocking and serves connections
//!     one after another instead of polling many.
//!   - the address returned by `accept()` carries no information; it is
//!     not used.
//!
//! The same file also builds natively (std::os::unix) for testing with the
//! kv-shim launcher, which provides fd 3 the same way.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
#[cfg(unix)]
use std::os::unix::io::FromRawFd;
#[cfg(target_os = "wasi")]
use std::os::wasi::io::FromRawFd;

/// Longest accepted request line; longer lines get an error and a close.
const MAX_LINE: usize = 1 << 20;

struct Store {
    // A BTreeMap keeps iteration order independent of any hash seed, which
    // keeps the guest deterministic.
    map: BTreeMap<String, String>,
    log: File,
}

/// Applies one logged or requested mutation to the map. Returns the reply.
fn apply(map: &mut BTreeMap<String, String>, line: &str) -> Option<String> {
    let (cmd, rest) = split_word(line);
    match cmd {
        "SET" => {
            let (key, value) = split_word(rest);
            if key.is_empty() {
                return Some("ERR usage: SET <key> <value>".into());
            }
            map.insert(key.to_string(), value.to_string());
            Some("OK".into())
        }
        "DEL" => {
            let (key, extra) = split_word(rest);
            if key.is_empty() || !extra.is_empty() {
                return Some("ERR usage: DEL <key>".into());
            }
            Some(format!("DELETED {}", map.remove(key).is_some() as u8))
        }
        _ => None,
    }
}

/// Splits off the first blank-separated word; the rest keeps its spaces
/// (after the single separator).
fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start_matches(' ');
    match s.find(' ') {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, ""),
    }
}

impl Store {
    fn open(dir: &str) -> std::io::Result<Store> {
        let path = format!("{}/rust-kv.log", dir);
        let mut log = OpenOptions::new().read(true).write(true).create(true).open(&path)?;
        let mut data = Vec::new();
        log.read_to_end(&mut data)?;
        let mut map = BTreeMap::new();
        // Only whole lines count: a crash can leave a partial last line.
        let whole = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        for raw in data[..whole].split(|&b| b == b'\n') {
            if raw.is_empty() {
                continue;
            }
            let line = String::from_utf8_lossy(raw);
            apply(&mut map, &line);
        }
        if whole < data.len() {
            eprintln!("rust-kv: {}: dropping a torn last line ({} bytes)", path, data.len() - whole);
            log.set_len(whole as u64)?;
        }
        // Appends go to the end. (OpenOptions::append would do the same, but
        // an explicit seek keeps the read-then-append sequence obvious.)
        log.seek(SeekFrom::Start(whole as u64))?;
        Ok(Store { map, log })
    }

    fn handle(&mut self, line: &str) -> (String, bool) {
        let (cmd, rest) = split_word(line);
        match cmd {
            "SET" | "DEL" => {
                let reply = apply(&mut self.map, line).unwrap();
                // Only changes are logged; durable before acknowledged.
                if reply == "OK" || reply == "DELETED 1" {
                    let rec = format!("{}\n", line);
                    if let Err(e) = self.log.write_all(rec.as_bytes()).and_then(|_| self.log.sync_data()) {
                        eprintln!("rust-kv: log write failed: {}", e);
                        std::process::exit(1);
                    }
                }
                (reply, false)
            }
            "GET" => match self.map.get(rest.trim()) {
                Some(v) => (format!("VALUE {}", v), false),
                None => ("NIL".into(), false),
            },
            "COUNT" => (format!("COUNT {}", self.map.len()), false),
            "QUIT" => ("BYE".into(), true),
            "" => ("ERR empty request".into(), false),
            _ => ("ERR unknown command".into(), false),
        }
    }

    fn serve(&mut self, stream: TcpStream) -> std::io::Result<()> {
        // TcpStream::try_clone is unsupported on wasm32-wasi (WASI has no dup), so the
        // reader and the writer share the stream through `&TcpStream`, which is Read + Write.
        let mut writer = &stream;
        let mut reader = BufReader::new(&stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let n = reader.by_ref().take(MAX_LINE as u64 + 1).read_until(b'\n', &mut buf)?;
            if n == 0 {
                return Ok(()); // the client closed
            }
            if buf.last() != Some(&b'\n') {
                if buf.len() > MAX_LINE {
                    writer.write_all(b"ERR line too long\n")?;
                }
                return Ok(()); // too long, or EOF in the middle of a line
            }
            buf.pop();
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            let line = match std::str::from_utf8(&buf) {
                Ok(s) => s.to_string(),
                Err(_) => {
                    writer.write_all(b"ERR not UTF-8\n")?;
                    continue;
                }
            };
            let (reply, quit) = self.handle(&line);
            writer.write_all(reply.as_bytes())?;
            writer.write_all(b"\n")?;
            if quit {
                return Ok(());
            }
        }
    }
}

fn main() {
    let dir = std::env::var("RUST_KV_DIR").unwrap_or_else(|_| "/data".to_string());
    let mut store = match Store::open(&dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("rust-kv: cannot open {}/rust-kv.log: {}", dir, e);
            std::process::exit(1);
        }
    };
    // SAFETY: fd 3 is the listener that Lockstep (or the native shim)
    // preopened for this process, and nothing else owns it.
    let listener = unsafe { TcpListener::from_raw_fd(3) };
    eprintln!("rust-kv: listening on fd 3, {} keys loaded", store.map.len());
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = store.serve(stream) {
                    eprintln!("rust-kv: connection ended: {}", e);
                }
            }
            Err(e) => {
                eprintln!("rust-kv: accept failed: {}", e);
                std::process::exit(1);
            }
        }
    }
}
