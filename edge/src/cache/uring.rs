//! The disk tier's I/O thread: every open, read, write, rename, unlink and
//! close of cache files is an io_uring operation submitted from here —
//! except large bodies, which are mapped on a blocking thread
//! (`mapped.rs`; io_uring has no mmap).
//!
//! Callers send a [`Request`] over a channel and wake the thread through an
//! eventfd that the ring itself is reading, so the thread sleeps in exactly
//! one place (`submit_and_wait`) whether it waits for callers or for the
//! kernel. Each request is a small state machine advanced by its completions;
//! many run at once. No file is ever named by a client: paths are built by
//! the disk tier from hashes.

use bytes::Bytes;
use io_uring::{opcode, squeue, types, IoUring};
use prometheus::IntCounter;
use slab::Slab;
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::mpsc;
use tokio::sync::oneshot;

const WAKE: u64 = u64::MAX;

/// Handle to the I/O thread. Cheap to share behind an `Arc`.
pub struct Uring {
    tx: mpsc::Sender<Request>,
    wake_fd: i32,
}

enum Request {
    Read {
        path: CString,
        size_hint: usize,
        reply: oneshot::Sender<io::Result<Vec<u8>>>,
    },
    Write {
        path: CString,
        tmp: CString,
        chunks: Vec<Bytes>,
        reply: oneshot::Sender<io::Result<()>>,
    },
    Unlink {
        path: CString,
        reply: oneshot::Sender<io::Result<()>>,
    },
}

enum Task {
    Read {
        path: CString,
        fd: i32,
        buf: Vec<u8>,
        reply: oneshot::Sender<io::Result<Vec<u8>>>,
        closing: bool,
    },
    Write {
        path: CString,
        tmp: CString,
        fd: i32,
        chunks: Vec<Bytes>,
        chunk: usize,
        at: usize,
        offset: u64,
        stage: WriteStage,
        reply: oneshot::Sender<io::Result<()>>,
    },
    Unlink {
        path: CString,
        reply: oneshot::Sender<io::Result<()>>,
    },
}

#[derive(Clone, Copy, PartialEq)]
enum WriteStage {
    Open,
    Data,
    Close,
    Rename,
}

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::other("path contains NUL"))
}

impl Uring {
    /// Creates the ring (failing if the kernel refuses io_uring) and starts
    /// the thread that drives it.
    pub fn start(entries: u32, submissions: IntCounter) -> io::Result<Uring> {
        let ring = IoUring::new(entries)?;
        // SAFETY: plain syscall; the fd is owned by the I/O thread from here on.
        let wake_fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if wake_fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("meshcast-uring".into())
            .spawn(move || {
                if let Err(e) = run(ring, rx, wake_fd, submissions) {
                    tracing::error!(error = %e, "io_uring thread stopped; disk tier requests will fail");
                }
            })?;
        Ok(Uring { tx, wake_fd })
    }

    fn send(&self, req: Request) -> io::Result<()> {
        self.tx
            .send(req)
            .map_err(|_| io::Error::other("io_uring thread is gone"))?;
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to our eventfd.
        unsafe { libc::write(self.wake_fd, (&one as *const u64).cast(), 8) };
        Ok(())
    }

    /// Reads a whole file. `size_hint` sizes the first buffer.
    pub async fn read(&self, path: &Path, size_hint: usize) -> io::Result<Vec<u8>> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Read {
            path: cstring(path)?,
            size_hint,
            reply,
        })?;
        rx.await
            .map_err(|_| io::Error::other("io_uring thread dropped the request"))?
    }

    /// Writes `chunks` to `tmp`, then renames it over `path`: readers see the
    /// old file or the whole new one, never a torn one.
    pub async fn write_atomic(
        &self,
        path: &Path,
        tmp: &Path,
        chunks: Vec<Bytes>,
    ) -> io::Result<()> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Write {
            path: cstring(path)?,
            tmp: cstring(tmp)?,
            chunks,
            reply,
        })?;
        rx.await
            .map_err(|_| io::Error::other("io_uring thread dropped the request"))?
    }

    pub async fn unlink(&self, path: &Path) -> io::Result<()> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Unlink {
            path: cstring(path)?,
            reply,
        })?;
        rx.await
            .map_err(|_| io::Error::other("io_uring thread dropped the request"))?
    }
}

fn push(ring: &mut IoUring, entry: squeue::Entry, submissions: &IntCounter) -> io::Result<()> {
    loop {
        // SAFETY: every buffer and path an entry points at is owned by a Task
        // in the slab (or the wake buffer) and is not moved or freed until the
        // entry's completion has been reaped.
        if unsafe { ring.submission().push(&entry) }.is_ok() {
            submissions.inc();
            return Ok(());
        }
        ring.submit()?;
    }
}

fn run(
    mut ring: IoUring,
    rx: mpsc::Receiver<Request>,
    wake_fd: i32,
    submissions: IntCounter,
) -> io::Result<()> {
    let mut tasks: Slab<Task> = Slab::new();
    let mut wake_buf = Box::new([0u8; 8]);
    let arm_wake = |ring: &mut IoUring, buf: &mut [u8; 8]| {
        let e = opcode::Read::new(types::Fd(wake_fd), buf.as_mut_ptr(), 8)
            .build()
            .user_data(WAKE);
        push(ring, e, &submissions)
    };
    arm_wake(&mut ring, &mut wake_buf)?;
    loop {
        loop {
            match rx.try_recv() {
                Ok(req) => {
                    let task = match req {
                        Request::Read {
                            path,
                            size_hint,
                            reply,
                        } => Task::Read {
                            path,
                            fd: -1,
                            buf: Vec::with_capacity(size_hint.max(4096)),
                            reply,
                            closing: false,
                        },
                        Request::Write {
                            path,
                            tmp,
                            chunks,
                            reply,
                        } => Task::Write {
                            path,
                            tmp,
                            fd: -1,
                            chunks,
                            chunk: 0,
                            at: 0,
                            offset: 0,
                            stage: WriteStage::Open,
                            reply,
                        },
                        Request::Unlink { path, reply } => Task::Unlink { path, reply },
                    };
                    let key = tasks.insert(task);
                    let entry = first_op(&tasks[key]).user_data(key as u64);
                    push(&mut ring, entry, &submissions)?;
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    if tasks.is_empty() {
                        return Ok(());
                    }
                    break;
                }
            }
        }
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
        let done: Vec<(u64, i32)> = ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (user_data, result) in done {
            if user_data == WAKE {
                arm_wake(&mut ring, &mut wake_buf)?;
                continue;
            }
            let key = user_data as usize;
            if let Some(next) = advance(&mut tasks, key, result) {
                push(&mut ring, next.user_data(user_data), &submissions)?;
            }
        }
    }
}

fn first_op(task: &Task) -> squeue::Entry {
    let cwd = types::Fd(libc::AT_FDCWD);
    match task {
        Task::Read { path, .. } => opcode::OpenAt::new(cwd, path.as_ptr())
            .flags(libc::O_RDONLY | libc::O_CLOEXEC)
            .build(),
        Task::Write { tmp, .. } => opcode::OpenAt::new(cwd, tmp.as_ptr())
            .flags(libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC)
            .mode(0o644)
            .build(),
        Task::Unlink { path, .. } => opcode::UnlinkAt::new(cwd, path.as_ptr()).build(),
    }
}

fn os_err(result: i32) -> io::Error {
    io::Error::from_raw_os_error(-result)
}

/// Applies one completion to its task; returns the next operation, or
/// `None` when the task has finished and replied.
fn advance(tasks: &mut Slab<Task>, key: usize, result: i32) -> Option<squeue::Entry> {
    let cwd = types::Fd(libc::AT_FDCWD);
    let task = tasks.get_mut(key)?;
    let next = match task {
        Task::Unlink { .. } => None,
        Task::Read {
            fd, buf, closing, ..
        } => {
            if *closing || result < 0 {
                None
            } else if *fd < 0 {
                *fd = result;
                Some(read_op(*fd, buf))
            } else if result == 0 {
                *closing = true;
                Some(opcode::Close::new(types::Fd(*fd)).build())
            } else {
                let asked = read_len(buf);
                // SAFETY: the kernel wrote `result` bytes into the spare capacity.
                unsafe { buf.set_len(buf.len() + result as usize) };
                if (result as usize) < asked {
                    // A regular file reads short only at its end: close now
                    // rather than ask again for the 0 that says so. (Were it
                    // not the end, the caller's length and checksum checks
                    // still judge what was read.)
                    *closing = true;
                    Some(opcode::Close::new(types::Fd(*fd)).build())
                } else {
                    Some(read_op(*fd, buf))
                }
            }
        }
        Task::Write {
            path,
            tmp,
            fd,
            chunks,
            chunk,
            at,
            offset,
            stage,
            ..
        } => {
            if result < 0 {
                None
            } else {
                match *stage {
                    WriteStage::Open | WriteStage::Data => {
                        if *stage == WriteStage::Open {
                            *fd = result;
                            *stage = WriteStage::Data;
                        } else {
                            *at += result as usize;
                            *offset += result as u64;
                        }
                        while *chunk < chunks.len() && *at >= chunks[*chunk].len() {
                            *chunk += 1;
                            *at = 0;
                        }
                        if *chunk < chunks.len() {
                            let data = &chunks[*chunk][*at..];
                            Some(
                                opcode::Write::new(
                                    types::Fd(*fd),
                                    data.as_ptr(),
                                    data.len() as u32,
                                )
                                .offset(*offset)
                                .build(),
                            )
                        } else {
                            *stage = WriteStage::Close;
                            Some(opcode::Close::new(types::Fd(*fd)).build())
                        }
                    }
                    WriteStage::Close => {
                        *fd = -1;
                        *stage = WriteStage::Rename;
                        Some(opcode::RenameAt::new(cwd, tmp.as_ptr(), cwd, path.as_ptr()).build())
                    }
                    WriteStage::Rename => None,
                }
            }
        }
    };
    if next.is_some() {
        return next;
    }
    finish(tasks.remove(key), result);
    None
}

/// Reads into the buffer's spare capacity, growing it only when full: a
/// buffer sized to the expected length plus one byte takes the whole file
/// in one read, without the copy and the doubled allocation a grow costs.
fn read_op(fd: i32, buf: &mut Vec<u8>) -> squeue::Entry {
    if buf.capacity() == buf.len() {
        buf.reserve(buf.capacity().max(4096));
    }
    let asked = read_len(buf) as u32;
    let spare = buf.spare_capacity_mut();
    opcode::Read::new(types::Fd(fd), spare.as_mut_ptr().cast(), asked)
        .offset(u64::MAX) // -1: read at the file position, like read(2)
        .build()
}

/// How many bytes `read_op` asks for: the spare capacity, within u32.
fn read_len(buf: &Vec<u8>) -> usize {
    (buf.capacity() - buf.len()).min(u32::MAX as usize)
}

/// Replies to a finished task. Error paths close and clean up with plain
/// syscalls: they are rare and must not be lost if the ring is in trouble.
fn finish(task: Task, result: i32) {
    match task {
        Task::Unlink { reply, .. } => {
            let _ = reply.send(if result < 0 {
                Err(os_err(result))
            } else {
                Ok(())
            });
        }
        Task::Read {
            fd,
            buf,
            reply,
            closing,
            ..
        } => {
            if result < 0 {
                if fd >= 0 && !closing {
                    // SAFETY: fd was opened by this task and not yet closed.
                    unsafe { libc::close(fd) };
                }
                let _ = reply.send(Err(os_err(result)));
            } else {
                let _ = reply.send(Ok(buf));
            }
        }
        Task::Write { tmp, fd, reply, .. } => {
            if result < 0 {
                if fd >= 0 {
                    // SAFETY: fd was opened by this task and not yet closed.
                    unsafe { libc::close(fd) };
                }
                // SAFETY: tmp is a valid C string.
                unsafe { libc::unlink(tmp.as_ptr()) };
                let _ = reply.send(Err(os_err(result)));
            } else {
                let _ = reply.send(Ok(()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn write_read_unlink_round_trip() {
        let dir = std::env::temp_dir().join(format!("meshcast-uring-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let counter = IntCounter::new("t", "t").unwrap();
        let ring = Uring::start(64, counter.clone()).expect("io_uring available");
        let path = dir.join("obj");
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let chunks = vec![Bytes::from_static(b"head"), Bytes::from(big.clone())];
        ring.write_atomic(&path, &dir.join("obj.tmp"), chunks)
            .await
            .unwrap();
        let back = ring.read(&path, 10).await.unwrap();
        assert_eq!(&back[..4], b"head");
        assert_eq!(&back[4..], &big[..]);
        let exact = ring.read(&path, big.len() + 5).await.unwrap();
        assert_eq!(exact.len(), big.len() + 4);
        assert_eq!(
            exact.capacity(),
            big.len() + 5,
            "a buffer of the length plus one takes the file without growing"
        );
        ring.unlink(&path).await.unwrap();
        let err = ring.read(&path, 10).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(counter.get() >= 8, "submissions counted: {}", counter.get());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
