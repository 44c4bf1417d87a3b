//! The pseudo-terminal plumbing the simulated serial lines share ([`super::rtu`] and
//! [`super::mbus`]): a pty pair whose slave end the daemon opens by path, a slave descriptor of
//! the simulator's own that keeps the line up between the daemon's opens, and close-on-exec on
//! the descriptors serialport opened. It knows nothing of any protocol and, like the rest of
//! `sim`, serves tests and `demo`, never the daemon's poll path. Its one `unsafe` block is
//! [`set_cloexec`] (it says why).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::Duration;

use tokio_serial::{SerialPort, SerialStream};

/// How long a relay waits before reading the master end again after it reported a hangup
/// (EIO or end of file): that happens while no slave descriptor is open, and the master stays
/// "readable" all that time, so reading again at once would spin.
pub(super) const HANGUP_PAUSE: Duration = Duration::from_millis(5);

/// A simulated line's pty: the master end the simulator reads and writes, the path of the slave
/// end the daemon opens, and the simulator's own slave descriptor (see
/// [`super::rtu::SimRtuBus`] for why it is held). Drop `master` before `held`: closing the
/// master hangs up every slave descriptor, the daemon's included.
#[derive(Debug)]
pub(super) struct Pty {
    pub(super) master: SerialStream,
    pub(super) path: PathBuf,
    pub(super) held: File,
}

impl Pty {
    pub(super) fn open() -> io::Result<Pty> {
        let (master, slave) = SerialStream::pair().map_err(io::Error::from)?;
        set_cloexec(&master)?;
        let path = slave
            .name()
            .map(PathBuf::from)
            .ok_or_else(|| io::Error::other("the pty's slave end has no name"))?;
        // std opens it close-on-exec; it is opened before serialport's is dropped, so the master
        // never sees a hangup. Plain: no TIOCEXCL, no lock, so the daemon's exclusive open
        // still succeeds.
        let held = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
            .open(&path)?;
        drop(slave);
        Ok(Pty { master, path, held })
    }
}

/// serialport opens both ends of a pty pair without `O_CLOEXEC`, and std offers no safe way to
/// set it on a descriptor it did not open. Without it, every child process a test spawns while
/// the line runs (the daemon binary, say) inherits the master, and closing ours would no longer
/// hang up the line. Between `pair()` and this call a concurrent spawn can still inherit them.
#[allow(unsafe_code)]
pub(super) fn set_cloexec(fd: &impl AsRawFd) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    // SAFETY: fcntl(F_SETFD) only changes the descriptor flags of `fd`, which the caller's
    // value owns and keeps open for the duration of the call; no memory is passed.
    let rc = unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
