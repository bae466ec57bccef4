//! rust_fs_net - the Rust std counterpart of the C test guests: files under
//! /data (std::fs) and a connection on the listener at fd 3
//! (`TcpListener::from_raw_fd(3)`; std reads and writes sockets with
//! fd_read/fd_write). Built with rustc 1.63 for wasm32-wasi, std only.
//!
//! Preopens: one --listen (fd 3) and the disk at /data (empty at start).
//! Client protocol (the test harness): connect once, send one line ending
//! in "\n" (UTF-8), read the reply line: the same text with its characters
//! in reverse order, plus "\n"; then close the connection.
//!
//! Prints "ok <check>" / "FAIL <check>: <detail>" lines and exits 0 only if
//! every check passed (1 otherwise).

use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::TcpListener;
#[cfg(unix)]
use std::os::unix::io::FromRawFd;
#[cfg(target_os = "wasi")]
use std::os::wasi::io::FromRawFd;

struct Checks {
    failed: u32,
    total: u32,
}

impl Checks {
    fn check(&mut self, name: &str, ok: bool, detail: String) {
        self.total += 1;
        if ok {
            println!("ok {}", name);
        } else {
            self.failed += 1;
            println!("FAIL {}: {}", name, detail);
        }
    }

    /// Records an io::Result: ok on Ok, FAIL with the error otherwise.
    fn io<T>(&mut self, name: &str, r: std::io::Result<T>) -> Option<T> {
        match r {
            Ok(v) => {
                self.check(name, true, String::new());
                Some(v)
            }
            Err(e) => {
                self.check(name, false, format!("{}", e));
                None
            }
        }
    }
}

fn files(c: &mut Checks) {
    let base = "/data/rust";
    let _ = fs::remove_dir_all(base); // leftovers from an earlier run
    c.io("create_dir_all", fs::create_dir_all(format!("{}/nested/deeper", base)));
    c.io("write", fs::write(format!("{}/hello.txt", base), "hello from rust\n"));
    let text = fs::read_to_string(format!("{}/hello.txt", base)).unwrap_or_default();
    c.check("read_to_string", text == "hello from rust\n", format!("read {:?}", text));
    if let Some(m) = c.io("metadata", fs::metadata(format!("{}/hello.txt", base))) {
        c.check("metadata_len", m.len() == 16, format!("len {}", m.len()));
        c.check("metadata_is_file", m.is_file(), "not a file".into());
    }

    // Append, seek and read through one File handle.
    let path = format!("{}/log.txt", base);
    if let Some(mut f) = c.io("open_append", OpenOptions::new().create(true).append(true).open(&path)) {
        let _ = f.write_all(b"one\n");
        let _ = f.write_all(b"two\n");
        c.io("sync_all", f.sync_all());
    }
    if let Some(mut f) = c.io("open_read", fs::File::open(&path)) {
        let mut s = String::new();
        let _ = f.seek(SeekFrom::Start(4));
        let _ = f.read_to_string(&mut s);
        c.check("seek_read", s == "two\n", format!("read {:?}", s));
    }

    // Listings: Lockstep returns names in byte order whatever the creation order.
    for name in ["b.txt", "Z.txt", "a.txt", "c.txt"] {
        let _ = fs::write(format!("{}/nested/{}", base, name), name);
    }
    let mut names: Vec<String> = Vec::new();
    if let Some(rd) = c.io("read_dir", fs::read_dir(format!("{}/nested", base))) {
        for e in rd.flatten() {
            names.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    println!("# read_dir order: {:?}", names);
    let mut sorted = names.clone();
    sorted.sort();
    c.check("read_dir_sorted", names == sorted, format!("{:?}", names));
    c.check(
        "read_dir_names",
        sorted == ["Z.txt", "a.txt", "b.txt", "c.txt", "deeper"],
        format!("{:?}", sorted),
    );

    c.io("rename", fs::rename(format!("{}/hello.txt", base), format!("{}/renamed.txt", base)));
    c.check(
        "rename_result",
        fs::metadata(format!("{}/hello.txt", base)).is_err()
            && fs::read_to_string(format!("{}/renamed.txt", base)).map(|s| s.len()).unwrap_or(0) == 16,
        "rename did not move the file".into(),
    );
    c.io("remove_file", fs::remove_file(format!("{}/renamed.txt", base)));
    let missing = fs::read(format!("{}/renamed.txt", base));
    c.check(
        "read_missing_not_found",
        matches!(&missing, Err(e) if e.kind() == std::io::ErrorKind::NotFound),
        format!("{:?}", missing.map(|v| v.len())),
    );
    c.io("remove_dir_all", fs::remove_dir_all(base));
    c.check("removed", fs::metadata(base).is_err(), "directory still there".into());
}

fn network(c: &mut Checks) {
    // SAFETY: fd 3 is the listener the host preopened; nothing else owns it.
    let listener = unsafe { TcpListener::from_raw_fd(3) };
    let stream = match c.io("accept", listener.accept()) {
        Some((s, _)) => s,
        None => return,
    };
    // TcpStream::try_clone is unsupported on wasm32-wasi (there is no dup), so the
    // reader and the writer share the stream through `&TcpStream`, which is Read + Write.
    let mut writer = &stream;
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    let n = reader.read_line(&mut line).unwrap_or(0);
    c.check("read_line", n > 0 && line.ends_with('\n'), format!("read {:?}", line));
    let text = line.trim_end_matches('\n').trim_end_matches('\r');
    let reversed: String = text.chars().rev().collect();
    println!("# received {:?}, replying {:?}", text, reversed);
    c.io("write_reply", writer.write_all(format!("{}\n", reversed).as_bytes()));
    let mut rest = Vec::new();
    let eof = reader.read_to_end(&mut rest);
    c.check(
        "eof_after_close",
        matches!(eof, Ok(0)),
        format!("{:?} extra bytes {:?}", eof.as_ref().map_err(|e| e.to_string()), rest.len()),
    );
}

fn main() {
    let mut c = Checks { failed: 0, total: 0 };
    files(&mut c);
    network(&mut c);
    println!("# {} checks, {} failed", c.total, c.failed);
    std::process::exit(if c.failed == 0 { 0 } else { 1 });
}
