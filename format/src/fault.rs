//! A clear message instead of a bare SIGBUS when a mapped file shrinks underneath the process.
//!
//! Reading a page of a mapped file that another process has since truncated raises SIGBUS, which
//! kills the process without a word. [`watch`] registers a mapping; a SIGBUS handler installed
//! on first use looks the faulting address up among the registered mappings and, if it falls in
//! one, writes that mapping's message to stderr and exits with status 2 (the status of every
//! other input error). A fault anywhere else goes to the handler that was installed before (or
//! the default action), so this changes nothing for other code. The handler only reads atomics,
//! calls `write(2)` and `_exit(2)`: all async-signal-safe.

use std::cell::UnsafeCell;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::*};

/// Mappings watched at once; more are mapped unwatched (the plain SIGBUS behaviour).
const SLOTS: usize = 64;
/// Longest message kept (a longer one is cut).
const MESSAGE: usize = 512;

struct Slot {
    /// Set while the slot belongs to a [`Watch`].
    taken: AtomicBool,
    /// First address of the mapping; 0 while the slot is not published.
    start: AtomicUsize,
    len: AtomicUsize,
    message_len: AtomicUsize,
    message: UnsafeCell<[u8; MESSAGE]>,
}

// SAFETY: `message` is written only by the thread that took the slot, before it publishes
// `start` (Release); the handler reads it only after loading a non-zero `start` (Acquire).
unsafe impl Sync for Slot {}

#[allow(clippy::declare_interior_mutable_const)] // one fresh value per array element
const EMPTY: Slot = Slot {
    taken: AtomicBool::new(false),
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    message_len: AtomicUsize::new(0),
    message: UnsafeCell::new([0; MESSAGE]),
};
static WATCHED: [Slot; SLOTS] = [EMPTY; SLOTS];
/// Handlers reading the slots right now: a dropped watch's slot is not handed out again until
/// they are done, so a handler never reads a message being rewritten.
static READERS: AtomicUsize = AtomicUsize::new(0);

/// A registered mapping; dropping it (before the mapping goes) unregisters it.
#[derive(Debug)]
pub struct Watch {
    slot: Option<usize>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            WATCHED[i].start.store(0, SeqCst);
            while READERS.load(SeqCst) != 0 {
                std::hint::spin_loop();
            }
            WATCHED[i].taken.store(false, Release);
        }
    }
}

/// Watches `len` bytes mapped at `start` from the file at `path`: a SIGBUS inside them ends the
/// process with a message naming the file (see the module docs).
pub fn watch(start: *const u8, len: usize, path: &Path) -> Watch {
    if start.is_null() || len == 0 || !install() {
        return Watch { slot: None };
    }
    let Some(i) = WATCHED.iter().position(|s| s.taken.compare_exchange(false, true, AcqRel, Relaxed).is_ok()) else {
        return Watch { slot: None };
    };
    let text = format!(
        "error: the file {} could not be read while in use: it was truncated (or became unreadable) after it was \
         opened, and nothing more can be read from it. Keep a file that is in use unchanged, and start again.\n",
        path.display()
    );
    let n = text.len().min(MESSAGE);
    let slot = &WATCHED[i];
    // SAFETY: this thread took the slot, and it is not published (`start` is 0), so nothing
    // else reads or writes the message.
    unsafe { (&mut *slot.message.get())[..n].copy_from_slice(&text.as_bytes()[..n]) };
    slot.message_len.store(n, Relaxed);
    slot.len.store(len, Relaxed);
    slot.start.store(start as usize, Release);
    Watch { slot: Some(i) }
}

#[cfg(unix)]
mod handler {
    use super::*;
    use std::mem::MaybeUninit;
    use std::sync::OnceLock;

    struct Previous(UnsafeCell<MaybeUninit<libc::sigaction>>);
    // SAFETY: written once, by the `sigaction` call that installs the handler, and only read by
    // the handler afterwards. (The kernel copies the old action out just after the new one takes
    // effect; a foreign SIGBUS in that instant reads the zeroed static: SIG_DFL, the default.)
    unsafe impl Sync for Previous {}
    static PREVIOUS: Previous = Previous(UnsafeCell::new(MaybeUninit::zeroed()));

    /// Installs the handler once; whether it is in place.
    pub(super) fn install() -> bool {
        static DONE: OnceLock<bool> = OnceLock::new();
        *DONE.get_or_init(|| {
            // SAFETY: a zeroed `sigaction` is a valid value; `sigaction` writes the previous
            // action into PREVIOUS before ours takes effect, and nothing reads PREVIOUS before.
            unsafe {
                let mut act: libc::sigaction = std::mem::zeroed();
                act.sa_sigaction = on_sigbus as *const () as libc::sighandler_t;
                act.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
                libc::sigemptyset(&mut act.sa_mask);
                libc::sigaction(libc::SIGBUS, &act, (*PREVIOUS.0.get()).as_mut_ptr()) == 0
            }
        })
    }

    extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
        // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler; the message bytes
        // of a published slot are not written while it is published.
        unsafe {
            let addr = (*info).si_addr() as usize;
            READERS.fetch_add(1, SeqCst);
            for s in &WATCHED {
                let start = s.start.load(SeqCst);
                if start != 0 && addr >= start && addr - start < s.len.load(Relaxed) {
                    let n = s.message_len.load(Relaxed);
                    libc::write(2, s.message.get() as *const libc::c_void, n);
                    libc::_exit(2);
                }
            }
            READERS.fetch_sub(1, SeqCst);
            // Not ours: what was there before runs, or the default action (the fault repeats on
            // return and kills the process as it would have).
            let prev = (*PREVIOUS.0.get()).assume_init_ref();
            match prev.sa_sigaction {
                libc::SIG_DFL | libc::SIG_IGN => {
                    let mut dfl: libc::sigaction = std::mem::zeroed();
                    dfl.sa_sigaction = libc::SIG_DFL;
                    libc::sigaction(libc::SIGBUS, &dfl, std::ptr::null_mut());
                    // A signal sent with kill does not repeat on return as a fault does: raise
                    // it again (it is delivered, under the default action, once this returns).
                    libc::raise(libc::SIGBUS);
                }
                f if prev.sa_flags & libc::SA_SIGINFO != 0 => {
                    let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) = std::mem::transmute(f);
                    f(sig, info, ctx);
                }
                f => {
                    let f: extern "C" fn(libc::c_int) = std::mem::transmute(f);
                    f(sig);
                }
            }
        }
    }
}

#[cfg(unix)]
use handler::install;

#[cfg(not(unix))]
fn install() -> bool {
    false
}
