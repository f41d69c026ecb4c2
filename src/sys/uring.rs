//! Safe io_uring wrapper used by the engine workers.
//!
//! The one soundness rule of io_uring that Rust cannot check is that memory
//! handed to the kernel in a submission (a read buffer) must stay valid and
//! untouched until the matching completion has been reaped. [`Ring`] enforces
//! it by owning every buffer in a *slot*:
//!
//! * an operation is always submitted for a slot, into that slot's buffer,
//!   with the slot index as `user_data`;
//! * while the operation is in flight the slot is *busy*: its buffer cannot be
//!   borrowed and the slot cannot be removed (both panic, as they are engine
//!   bugs, not runtime conditions);
//! * [`Ring::pop_completion`] marks the slot idle again, after which the
//!   buffer holds the data the kernel wrote;
//! * dropping the ring with operations still in flight cancels them and waits
//!   (bounded) for their completions; buffers of operations that still did
//!   not complete are leaked rather than freed under the kernel's feet.
//!
//! Buffers are separate heap allocations kept as raw pointers, so that no
//! Rust reference to them exists while the kernel writes into them (moving
//! or growing the slot table never moves a buffer).
//!
//! File descriptors are passed as [`BorrowedFd`]: the kernel takes its own
//! reference to the file when the submission is consumed, so a descriptor
//! closed after submitting cannot make the kernel touch freed memory; the
//! engine still keeps every descriptor open until its operation completed so
//! that a reused descriptor number can never be read by mistake.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;
use std::time::Duration;

use io_uring::{opcode, squeue, types, IoUring};

/// `user_data` of operations the ring submits for itself (cancellations and
/// the shutdown timeout); never a slot index.
const INTERNAL_USER_DATA: u64 = u64::MAX;

/// How long dropping a ring waits for cancelled operations to complete.
const DROP_DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// A buffer (plus in-flight state) that operations are submitted for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotId(u32);

impl SlotId {
    /// Dense index of the slot, usable to index side tables.
    pub fn index(self) -> usize {
        self.0 as usize
    }

    /// The slot with index `index`, for callers that keep slot indices as
    /// their own ids. Any value is sound: ring methods panic on an index
    /// that is not an allocated slot in the state they need.
    pub fn from_index(index: u32) -> SlotId {
        SlotId(index)
    }
}

/// A reaped completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    pub slot: SlotId,
    /// The raw CQE result: bytes read, poll revents, or `-errno`.
    pub result: i32,
    /// The provided buffer a multishot read filled (see
    /// [`Ring::provided_buffer`]); it must be given back with
    /// [`Ring::recycle`].
    pub buffer: Option<u16>,
    /// The operation stays armed (multishot) and the slot busy: more
    /// completions of it follow.
    pub more: bool,
}

impl Completion {
    /// `result` as a `Result`: non-negative values, or the errno.
    pub fn outcome(&self) -> Result<u32, nix::errno::Errno> {
        u32::try_from(self.result).map_err(|_| nix::errno::Errno::from_raw(-self.result))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    /// Not allocated; `buffer` is dangling and has length 0.
    Vacant,
    /// Allocated, no operation in flight: the buffer may be borrowed.
    Idle,
    /// An operation is in flight: the kernel may write into the buffer.
    Busy,
}

struct Slot {
    /// Owned allocation from `Box<[u8]>::into_raw` (or an empty dangling
    /// slice when vacant); freed in `free_buffer`.
    buffer: NonNull<[u8]>,
    state: SlotState,
}

impl Slot {
    fn vacant() -> Slot {
        Slot {
            buffer: NonNull::slice_from_raw_parts(NonNull::dangling(), 0),
            state: SlotState::Vacant,
        }
    }

    fn allocate(&mut self, len: usize) {
        debug_assert_eq!(self.state, SlotState::Vacant);
        let boxed: Box<[u8]> = vec![0u8; len].into_boxed_slice();
        self.buffer = NonNull::from(Box::leak(boxed));
        self.state = SlotState::Idle;
    }

    /// Frees the buffer; only for idle slots (never while the kernel may
    /// still write into it).
    fn free_buffer(&mut self) {
        assert_eq!(self.state, SlotState::Idle, "freeing a non-idle slot");
        let buffer = std::mem::replace(
            &mut self.buffer,
            NonNull::slice_from_raw_parts(NonNull::dangling(), 0),
        );
        // SAFETY: `buffer` came from `Box::leak` in `allocate` and has not
        // been freed (it is replaced by a dangling empty slice right here, so
        // it cannot be freed twice); the slot is idle, so no operation is in
        // flight and the kernel holds no pointer into it.
        drop(unsafe { Box::from_raw(buffer.as_ptr()) });
        self.state = SlotState::Vacant;
    }
}

/// One io_uring plus the slots its operations run on. Not `Send`: a worker
/// creates it on its own thread and keeps it there.
pub struct Ring {
    ring: IoUring,
    slots: Vec<Slot>,
    vacant: Vec<u32>,
    in_flight: usize,
    /// Read by the kernel when the drop-time timeout is submitted; lives in
    /// the ring so that it outlives that submission.
    drain_timeout: types::Timespec,
    /// Read by the kernel when a wait timeout operation is submitted (only
    /// on kernels without `IORING_FEAT_EXT_ARG`); lives in the ring for the
    /// same reason as `drain_timeout`.
    wait_timeout: types::Timespec,
    /// Set up with `DEFER_TASKRUN`: completion work runs only in waits.
    deferred_taskrun: bool,
    /// The buffer ring of multishot reads, once enabled.
    provided: Option<ProvidedBuffers>,
}

/// Buffer group id of the ring's provided buffers (one group per ring).
const PROVIDED_GROUP: u16 = 0;

/// A ring of buffers the kernel picks from for multishot reads
/// (`IORING_REGISTER_PBUF_RING`). The soundness rule, as for slots: the
/// kernel may write into every buffer that is *in the ring*; a buffer a
/// completion names is *lent* to user space, and is only borrowed while
/// lent, until [`Ring::recycle`] puts it back.
struct ProvidedBuffers {
    /// `count` ring entries, page-aligned (an anonymous mapping), shared
    /// with the kernel; the tail lives in entry 0's reserved field.
    entries: NonNull<types::BufRingEntry>,
    entries_len: usize,
    /// `count * len` bytes (an anonymous mapping, resident as touched).
    memory: NonNull<u8>,
    count: u16,
    len: u32,
    /// Next tail to publish.
    tail: u16,
    lent: Vec<bool>,
}

impl ProvidedBuffers {
    fn new(count: u16, len: u32) -> io::Result<ProvidedBuffers> {
        assert!(
            count.is_power_of_two(),
            "buffer ring size must be a power of two"
        );
        let entries_len = usize::from(count) * std::mem::size_of::<types::BufRingEntry>();
        let memory_len = usize::from(count) * len as usize;
        let entries = map_anonymous(entries_len)?;
        let memory = match map_anonymous(memory_len) {
            Ok(memory) => memory,
            Err(err) => {
                // SAFETY: just mapped with this length, not shared with the
                // kernel yet.
                unsafe { unmap(entries, entries_len) };
                return Err(err);
            }
        };
        let mut buffers = ProvidedBuffers {
            entries: entries.cast(),
            entries_len,
            memory,
            count,
            len,
            tail: 0,
            lent: vec![false; usize::from(count)],
        };
        for bid in 0..count {
            buffers.push(bid);
        }
        buffers.publish();
        Ok(buffers)
    }

    /// Writes the entry for `bid` at the tail (not yet visible to the kernel).
    fn push(&mut self, bid: u16) {
        let index = usize::from(self.tail & (self.count - 1));
        // SAFETY: `index < count`, so the entry lies inside the mapping. The
        // kernel only reads entries between its head and the published
        // tail, and this one is past the published tail. Setting addr, len
        // and bid never touches the reserved field that holds the tail.
        let entry = unsafe { &mut *self.entries.as_ptr().add(index) };
        // SAFETY: `bid < count`: the buffer lies inside `memory`.
        let addr = unsafe {
            self.memory
                .as_ptr()
                .add(usize::from(bid) * self.len as usize)
        };
        entry.set_addr(addr as u64);
        entry.set_len(self.len);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes the pushed entries visible to the kernel.
    fn publish(&self) {
        // SAFETY: the tail is a u16 inside entry 0, valid for the mapping's
        // lifetime and aligned for u16; the kernel reads it concurrently, so
        // it is written atomically, with release ordering so that the
        // entries written before are seen first.
        unsafe {
            let tail = types::BufRingEntry::tail(self.entries.as_ptr()).cast_mut();
            (*tail.cast::<std::sync::atomic::AtomicU16>())
                .store(self.tail, std::sync::atomic::Ordering::Release);
        }
    }
}

impl Drop for ProvidedBuffers {
    fn drop(&mut self) {
        // SAFETY: both were mapped with these lengths in `new`; `Ring`
        // drops this only once the kernel can no longer write into the
        // buffers (no multishot read in flight, or the ring is gone) and
        // leaks it otherwise.
        unsafe {
            unmap(self.entries.cast(), self.entries_len);
            unmap(self.memory, usize::from(self.count) * self.len as usize);
        }
    }
}

/// A private anonymous read-write mapping of `len` bytes (page-aligned,
/// zero-filled, resident only where touched).
fn map_anonymous(len: usize) -> io::Result<NonNull<u8>> {
    use nix::sys::mman::{mmap_anonymous, MapFlags, ProtFlags};
    let len = std::num::NonZeroUsize::new(len).expect("empty mapping");
    // SAFETY: a fresh anonymous mapping aliases nothing.
    let memory = unsafe {
        mmap_anonymous(
            None,
            len,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_PRIVATE,
        )
    }?;
    Ok(memory.cast())
}

/// # Safety
/// `memory` must be a mapping of `len` bytes from `map_anonymous` that
/// nothing uses any more.
unsafe fn unmap(memory: NonNull<u8>, len: usize) {
    // SAFETY: forwarded to the caller.
    let _ = unsafe { nix::sys::mman::munmap(memory.cast(), len) };
}

/// `IORING_ENTER_GETEVENTS` (an interface constant of `io_uring_enter(2)`).
const ENTER_GETEVENTS: u32 = 1;

impl Ring {
    /// Sets up a ring with `entries` submission queue entries. Completions
    /// beyond the queue size are kept by the kernel (`IORING_FEAT_NODROP`),
    /// so `entries` bounds batching, not the number of operations in flight.
    pub fn new(entries: u32) -> io::Result<Ring> {
        // DEFER_TASKRUN (6.1+, with SINGLE_ISSUER: a ring is only ever used
        // by the worker thread that made it) runs completion work only when
        // the worker waits on the ring. Without it, every read that becomes
        // ready flags the worker for task work, which cuts short any other
        // sleep, such as the engine's batch-window pause (measured: one
        // wake-up per container burst instead of one per window).
        // COOP_TASKRUN (5.19+) at least spares it inter-processor
        // interrupts; older kernels get a plain ring.
        let deferred = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(entries);
        let (ring, deferred_taskrun) = match deferred {
            Ok(ring) => (ring, true),
            Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {
                match IoUring::builder().setup_coop_taskrun().build(entries) {
                    Ok(ring) => (ring, false),
                    Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {
                        (IoUring::new(entries)?, false)
                    }
                    Err(err) => return Err(err),
                }
            }
            Err(err) => return Err(err),
        };
        Ok(Ring {
            ring,
            slots: Vec::new(),
            vacant: Vec::new(),
            in_flight: 0,
            drain_timeout: DROP_DRAIN_TIMEOUT.into(),
            wait_timeout: types::Timespec::new(),
            deferred_taskrun,
            provided: None,
        })
    }

    /// Sets up `count` provided buffers of `len` bytes for
    /// [`Ring::read_multishot`]. Fails with `Unsupported` where the kernel
    /// has no multishot reads (6.7+) or buffer rings (5.19+): probed, not
    /// guessed from the version.
    pub fn enable_provided_buffers(&mut self, count: u16, len: u32) -> io::Result<()> {
        let mut probe = io_uring::Probe::new();
        self.ring.submitter().register_probe(&mut probe)?;
        if !probe.is_supported(opcode::ReadMulti::CODE) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "no IORING_OP_READ_MULTISHOT",
            ));
        }
        let buffers = ProvidedBuffers::new(count, len)?;
        // SAFETY: the entries stay mapped until the buffers are dropped,
        // which `Drop for Ring` does only after the ring is torn down or no
        // operation can use them any more.
        unsafe {
            self.ring.submitter().register_buf_ring_with_flags(
                buffers.entries.as_ptr() as u64,
                count,
                PROVIDED_GROUP,
                0,
            )
        }?;
        self.provided = Some(buffers);
        Ok(())
    }

    /// Whether the ring was set up with `DEFER_TASKRUN`.
    pub fn has_deferred_taskrun(&self) -> bool {
        self.deferred_taskrun
    }

    /// Whether `enable_provided_buffers` succeeded.
    pub fn has_provided_buffers(&self) -> bool {
        self.provided.is_some()
    }

    /// Queues a multishot read of `fd`: each time it has data, the kernel
    /// reads it into a provided buffer and posts a completion naming the
    /// buffer, with `more` set while the read stays armed. The slot stays
    /// busy until a completion without `more` (EOF, an error, no free
    /// buffer, or a cancellation).
    ///
    /// # Panics
    /// If the slot is not idle, or no provided buffers are enabled.
    pub fn read_multishot(&mut self, slot: SlotId, fd: BorrowedFd<'_>) -> io::Result<()> {
        assert!(
            self.provided.is_some(),
            "multishot read without provided buffers"
        );
        // The slot's own buffer is not used: the kernel picks one of the
        // provided buffers.
        let _ = self.mark_busy(slot);
        let entry = opcode::ReadMulti::new(types::Fd(fd.as_raw_fd()), 0, PROVIDED_GROUP)
            .build()
            .user_data(u64::from(slot.0));
        // SAFETY: the entry references no user memory but the provided
        // buffers, which are mapped for as long as an operation can use them
        // (see `enable_provided_buffers`).
        let pushed = unsafe { self.push(&entry) };
        self.unmark_if_failed(slot, pushed)
    }

    /// The first `len` bytes of a provided buffer a completion lent out.
    ///
    /// # Panics
    /// If the buffer is not lent (never named by a completion, or recycled).
    pub fn provided_buffer(&self, bid: u16, len: usize) -> &[u8] {
        let buffers = self.provided.as_ref().expect("no provided buffers");
        assert!(
            buffers.lent[usize::from(bid)],
            "borrowing a buffer the kernel owns"
        );
        assert!(len <= buffers.len as usize);
        // SAFETY: a lent buffer is out of the ring, so the kernel does not
        // write into it until `recycle` (which needs `&mut self`) puts it
        // back; it lies inside the mapping (`bid < count`, `len <= len`).
        unsafe {
            std::slice::from_raw_parts(
                buffers
                    .memory
                    .as_ptr()
                    .add(usize::from(bid) * buffers.len as usize),
                len,
            )
        }
    }

    /// Gives a lent provided buffer back to the kernel.
    ///
    /// # Panics
    /// If it is not lent.
    pub fn recycle(&mut self, bid: u16) {
        let buffers = self.provided.as_mut().expect("no provided buffers");
        assert!(
            buffers.lent[usize::from(bid)],
            "recycling a buffer the kernel owns"
        );
        buffers.lent[usize::from(bid)] = false;
        buffers.push(bid);
        buffers.publish();
    }

    /// Gives an idle slot a fresh zeroed buffer of `buffer_len` bytes (a
    /// source moving from multishot reads to reads of its own).
    ///
    /// # Panics
    /// If the slot is not idle.
    pub fn replace_buffer(&mut self, slot: SlotId, buffer_len: usize) {
        assert!(u32::try_from(buffer_len).is_ok(), "slot buffer too large");
        let slot = &mut self.slots[slot.index()];
        slot.free_buffer();
        slot.allocate(buffer_len);
    }

    /// Posts the completions of operations that finished since the last
    /// wait, without submitting what is queued. With `DEFER_TASKRUN` they
    /// reach the completion queue only when the worker enters the ring, and
    /// a queued read submitted in the same entry can complete inline ahead
    /// of them: a container's stdout written after its stderr would then be
    /// logged first. Calling this before `submit_and_wait*` keeps
    /// completions in the order the sources became ready.
    pub fn post_finished_completions(&mut self) -> io::Result<()> {
        if self.ring.submission().is_empty() {
            return Ok(());
        }
        self.run_completion_work().map(drop)
    }

    /// With `DEFER_TASKRUN`: runs pending completion work (posting what it
    /// completes) without submitting or waiting, and returns true. The
    /// kernel runs a bounded amount per call. Without it: false, nothing to
    /// do (completion work runs by itself).
    pub fn run_completion_work(&mut self) -> io::Result<bool> {
        if !self.deferred_taskrun {
            return Ok(false);
        }
        // SAFETY: no submissions (to_submit 0) and no argument pointer: the
        // kernel reads no user memory, it only runs the ring's pending
        // completion work.
        match unsafe {
            self.ring
                .submitter()
                .enter::<libc::sigset_t>(0, 0, ENTER_GETEVENTS, None)
        } {
            Ok(_) => Ok(true),
            Err(err) if matches!(err.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) => Ok(true),
            Err(err) => Err(err),
        }
    }

    /// Allocates a slot with a zeroed buffer of `buffer_len` bytes (at most
    /// `u32::MAX`).
    pub fn add_slot(&mut self, buffer_len: usize) -> SlotId {
        assert!(u32::try_from(buffer_len).is_ok(), "slot buffer too large");
        let index = match self.vacant.pop() {
            Some(index) => index,
            None => {
                let index = u32::try_from(self.slots.len()).expect("more than 2^32 slots");
                assert!(u64::from(index) != INTERNAL_USER_DATA);
                self.slots.push(Slot::vacant());
                index
            }
        };
        self.slots[index as usize].allocate(buffer_len);
        SlotId(index)
    }

    /// Frees an idle slot and its buffer.
    ///
    /// # Panics
    /// If an operation of the slot is still in flight, or it was removed.
    pub fn remove_slot(&mut self, slot: SlotId) {
        self.slots[slot.index()].free_buffer();
        self.vacant.push(slot.0);
    }

    /// The buffer of an idle slot.
    ///
    /// # Panics
    /// If an operation of the slot is in flight (the kernel may be writing
    /// into it), or the slot was removed.
    pub fn buffer(&self, slot: SlotId) -> &[u8] {
        let slot = &self.slots[slot.index()];
        assert_eq!(slot.state, SlotState::Idle, "borrowing a non-idle slot");
        // SAFETY: the allocation is live (state Idle ⇒ allocated, not freed)
        // and no operation is in flight, so the kernel does not write into
        // it; the returned borrow is tied to `&self`, and every path that
        // submits an operation or frees the buffer needs `&mut self`.
        unsafe { slot.buffer.as_ref() }
    }

    /// The buffer of an idle slot, for a plain `read(2)` into it.
    ///
    /// # Panics
    /// As [`Ring::buffer`].
    pub fn buffer_mut(&mut self, slot: SlotId) -> &mut [u8] {
        let slot = &mut self.slots[slot.index()];
        assert_eq!(slot.state, SlotState::Idle, "borrowing a non-idle slot");
        // SAFETY: as in `buffer`; the borrow is tied to `&mut self`, so it is
        // the only reference to the buffer while it lives.
        unsafe { slot.buffer.as_mut() }
    }

    /// Number of operations submitted (or queued) and not yet reaped.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Queues a `read(2)` of `fd` into the slot's whole buffer, at the file's
    /// current position (pipes, eventfds). The result is the byte count.
    ///
    /// # Panics
    /// If the slot is not idle.
    pub fn read(&mut self, slot: SlotId, fd: BorrowedFd<'_>) -> io::Result<()> {
        let target = self.mark_busy(slot);
        let entry = opcode::Read::new(
            types::Fd(fd.as_raw_fd()),
            target.as_ptr().cast::<u8>(),
            target.len() as u32,
        )
        // -1: "use the current file position", exactly like read(2).
        .offset(u64::MAX)
        .build()
        .user_data(u64::from(slot.0));
        // SAFETY: the entry points into the slot's buffer, a live heap
        // allocation that `mark_busy` just flagged busy: it can be neither
        // borrowed nor freed until `pop_completion` reaps this operation's
        // completion, and `Drop` leaks it if that never happens.
        let pushed = unsafe { self.push(&entry) };
        self.unmark_if_failed(slot, pushed)
    }

    /// Queues a one-shot poll for readability (`POLLIN`; errors and hang-ups
    /// are always reported) of `fd`. The result is the revents mask. The
    /// slot's buffer is not used, but the slot is busy until completion.
    ///
    /// # Panics
    /// If the slot is not idle.
    pub fn poll_readable(&mut self, slot: SlotId, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.poll(slot, fd, libc::POLLIN)
    }

    /// Queues a one-shot poll for writability (`POLLOUT`; errors and
    /// hang-ups are always reported) of `fd`, as [`Ring::poll_readable`].
    ///
    /// # Panics
    /// If the slot is not idle.
    pub fn poll_writable(&mut self, slot: SlotId, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.poll(slot, fd, libc::POLLOUT)
    }

    fn poll(&mut self, slot: SlotId, fd: BorrowedFd<'_>, events: libc::c_short) -> io::Result<()> {
        self.mark_busy(slot);
        // The mask is a bit set: reinterpreting the sign bit is intended.
        let entry = opcode::PollAdd::new(types::Fd(fd.as_raw_fd()), events as u16 as u32)
            .build()
            .user_data(u64::from(slot.0));
        // SAFETY: a poll operation references no user memory.
        let pushed = unsafe { self.push(&entry) };
        self.unmark_if_failed(slot, pushed)
    }

    /// Asks the kernel to cancel the operation in flight on `slot`. The slot
    /// stays busy until that operation's completion is reaped by
    /// [`Ring::pop_completion`] (usually `-ECANCELED`; the operation's own
    /// result if it finished first). The cancellation's own completion is
    /// internal and never reported.
    ///
    /// # Panics
    /// If no operation of the slot is in flight.
    pub fn cancel(&mut self, slot: SlotId) -> io::Result<()> {
        assert_eq!(
            self.slots[slot.index()].state,
            SlotState::Busy,
            "cancelling an idle slot"
        );
        let entry = opcode::AsyncCancel::new(u64::from(slot.0))
            .build()
            .user_data(INTERNAL_USER_DATA);
        // SAFETY: a cancellation references no user memory.
        unsafe { self.push(&entry) }
    }

    /// Submits queued operations and waits until at least `want` completions
    /// are available (a signal may end the wait early; callers loop).
    pub fn submit_and_wait(&mut self, want: usize) -> io::Result<()> {
        match self.ring.submit_and_wait(want) {
            Ok(_) => Ok(()),
            // EINTR: a signal. EBUSY: the completion queue overflowed and
            // must be reaped before more can be submitted; the caller reaps
            // and comes back.
            Err(err) if matches!(err.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// As [`Ring::submit_and_wait`], but returns after `timeout` even if
    /// fewer completions are available.
    pub fn submit_and_wait_timeout(&mut self, want: usize, timeout: Duration) -> io::Result<()> {
        if self.ring.params().is_feature_ext_arg() {
            // 5.11+: the timeout is an argument of the wait itself.
            let timespec = types::Timespec::from(timeout);
            let args = types::SubmitArgs::new().timespec(&timespec);
            return match self.ring.submitter().submit_with_args(want, &args) {
                Ok(_) => Ok(()),
                Err(err)
                    if matches!(
                        err.raw_os_error(),
                        Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                    ) =>
                {
                    Ok(())
                }
                Err(err) => Err(err),
            };
        }
        // Older kernels: a timeout operation that also completes as soon as
        // one other completion is posted, so none lingers in the kernel
        // after a wait that ended for another reason.
        self.wait_timeout = timeout.into();
        let entry = opcode::Timeout::new(&self.wait_timeout)
            .count(1)
            .build()
            .user_data(INTERNAL_USER_DATA);
        // SAFETY: the timespec lives in `self.wait_timeout` until the ring is
        // dropped (it is only overwritten with another valid timespec), and
        // the kernel copies it while consuming the submission anyway.
        unsafe { self.push(&entry) }?;
        self.submit_and_wait(want)
    }

    /// Reaps the next completion of a slot operation, marking its slot idle.
    pub fn pop_completion(&mut self) -> Option<Completion> {
        loop {
            let entry = self.ring.completion().next()?;
            let Ok(index) = u32::try_from(entry.user_data()) else {
                continue; // INTERNAL_USER_DATA: cancellation or timeout.
            };
            let flags = entry.flags();
            let buffer = io_uring::cqueue::buffer_select(flags);
            if let (Some(bid), Some(buffers)) = (buffer, self.provided.as_mut()) {
                buffers.lent[usize::from(bid)] = true;
            }
            let more = io_uring::cqueue::more(flags);
            let slot = &mut self.slots[index as usize];
            debug_assert_eq!(slot.state, SlotState::Busy);
            if !more {
                slot.state = SlotState::Idle;
                self.in_flight -= 1;
            }
            return Some(Completion {
                slot: SlotId(index),
                result: entry.result(),
                buffer,
                more,
            });
        }
    }

    /// Flags an idle slot busy and returns its buffer for the submission.
    fn mark_busy(&mut self, slot: SlotId) -> NonNull<[u8]> {
        let slot = &mut self.slots[slot.index()];
        assert_eq!(slot.state, SlotState::Idle, "submitting on a non-idle slot");
        slot.state = SlotState::Busy;
        self.in_flight += 1;
        slot.buffer
    }

    /// Undoes `mark_busy` when the entry never reached the queue (the
    /// kernel has not seen the buffer).
    fn unmark_if_failed(&mut self, slot: SlotId, pushed: io::Result<()>) -> io::Result<()> {
        if pushed.is_err() {
            self.slots[slot.index()].state = SlotState::Idle;
            self.in_flight -= 1;
        }
        pushed
    }

    /// Pushes one entry, submitting first if the submission queue is full.
    ///
    /// # Safety
    /// Every buffer or pointer the entry references must stay valid until its
    /// completion is reaped (or the ring is gone).
    unsafe fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: forwarded to the caller of this function.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            // The queue is full: hand the queued entries to the kernel. (An
            // EBUSY here means completions must be reaped first: the caller
            // sees the error, reaps on its next turn and carries on.)
            match self.ring.submit() {
                Ok(_) => {}
                Err(err) if err.raw_os_error() == Some(libc::EINTR) => {}
                Err(err) => return Err(err),
            }
        }
    }

    /// Cancels every in-flight operation and reaps completions until none is
    /// in flight or `DROP_DRAIN_TIMEOUT` passed without progress.
    fn cancel_all_and_drain(&mut self) {
        let busy: Vec<u32> = (0..self.slots.len() as u32)
            .filter(|&index| self.slots[index as usize].state == SlotState::Busy)
            .collect();
        for index in busy {
            let cancel = opcode::AsyncCancel::new(u64::from(index))
                .build()
                .user_data(INTERNAL_USER_DATA);
            // SAFETY: a cancellation references no user memory.
            if unsafe { self.push(&cancel) }.is_err() {
                return;
            }
        }
        // With DEFER_TASKRUN a wait can return on the cancellations' own
        // completions before the cancelled operations' arrive, so only a
        // whole timeout without progress ends the drain.
        let mut last_progress = std::time::Instant::now();
        while self.in_flight > 0 {
            let before = self.in_flight;
            let timeout = opcode::Timeout::new(&self.drain_timeout)
                .build()
                .user_data(INTERNAL_USER_DATA);
            // SAFETY: the timespec lives in `self.drain_timeout`, which stays
            // in place until the ring (and its queues) is dropped; the kernel
            // copies it while consuming the submission anyway.
            if unsafe { self.push(&timeout) }.is_err() || self.submit_and_wait(1).is_err() {
                return;
            }
            while self.pop_completion().is_some() {}
            if self.in_flight < before {
                last_progress = std::time::Instant::now();
            } else if last_progress.elapsed() >= DROP_DRAIN_TIMEOUT {
                return;
            }
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        if self.in_flight > 0 {
            self.cancel_all_and_drain();
        }
        if let Some(buffers) = self.provided.take() {
            if self.in_flight == 0 {
                // Nothing can read into them any more.
                let _ = self.ring.submitter().unregister_buf_ring(PROVIDED_GROUP);
                drop(buffers);
            } else {
                // A multishot read may still be armed: leak them.
                std::mem::forget(buffers);
            }
        }
        for slot in &mut self.slots {
            match slot.state {
                SlotState::Idle => slot.free_buffer(),
                // The kernel may still write into it: leak the buffer.
                SlotState::Busy | SlotState::Vacant => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use nix::fcntl::OFlag;

    use super::*;

    fn next_completion(ring: &mut Ring) -> Completion {
        loop {
            ring.submit_and_wait(1).unwrap();
            if let Some(completion) = ring.pop_completion() {
                return completion;
            }
        }
    }

    /// A ring with two 16-byte provided buffers and a multishot read armed
    /// on a new pipe (read end, write end, slot); None without multishot
    /// reads.
    fn multishot_pipe() -> Option<(Ring, std::os::fd::OwnedFd, std::os::fd::OwnedFd, SlotId)> {
        let mut ring = Ring::new(8).unwrap();
        ring.enable_provided_buffers(2, 16).ok()?;
        let (read_end, write_end) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        let slot = ring.add_slot(0);
        ring.read_multishot(slot, read_end.as_fd()).unwrap();
        Some((ring, read_end, write_end, slot))
    }

    #[test]
    fn multishot_reads_fill_provided_buffers_until_eof() {
        let Some((mut ring, _read_end, write_end, slot)) = multishot_pipe() else {
            eprintln!("no multishot reads on this kernel; skipped");
            return;
        };
        for word in [&b"one"[..], b"two", b"three"] {
            nix::unistd::write(&write_end, word).unwrap();
            let completion = next_completion(&mut ring);
            assert_eq!(completion.slot, slot);
            assert!(completion.more, "the read stays armed");
            let bid = completion.buffer.expect("a provided buffer");
            let len = completion.outcome().unwrap() as usize;
            assert_eq!(ring.provided_buffer(bid, len), word);
            ring.recycle(bid);
            assert_eq!(ring.in_flight(), 1);
        }
        drop(write_end);
        let eof = next_completion(&mut ring);
        assert_eq!((eof.result, eof.buffer, eof.more), (0, None, false));
        assert_eq!(ring.in_flight(), 0);
        ring.remove_slot(slot);
    }

    #[test]
    fn a_multishot_read_without_free_buffers_ends_with_enobufs() {
        let Some((mut ring, read_end, write_end, slot)) = multishot_pipe() else {
            eprintln!("no multishot reads on this kernel; skipped");
            return;
        };
        let mut lent = Vec::new();
        let end = loop {
            nix::unistd::write(&write_end, b"x").unwrap();
            let completion = next_completion(&mut ring);
            if !completion.more {
                break completion;
            }
            lent.push(completion.buffer.unwrap());
        };
        assert_eq!(lent.len(), 2, "both buffers used first");
        assert_eq!(end.outcome(), Err(nix::errno::Errno::ENOBUFS));
        // Buffers given back, the read can be armed again and goes on.
        for bid in lent {
            ring.recycle(bid);
        }
        ring.read_multishot(slot, read_end.as_fd()).unwrap();
        let again = next_completion(&mut ring);
        assert!(again.more);
        let bid = again.buffer.unwrap();
        assert_eq!(ring.provided_buffer(bid, again.result as usize), b"x");
        ring.recycle(bid);
        // Dropping the ring with the multishot read armed cancels it.
        drop(ring);
    }

    #[test]
    fn reads_a_pipe_into_the_slot_buffer() {
        let mut ring = Ring::new(8).unwrap();
        let (read_end, write_end) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        let slot = ring.add_slot(16);
        ring.read(slot, read_end.as_fd()).unwrap();
        assert_eq!(ring.in_flight(), 1);
        nix::unistd::write(&write_end, b"hello").unwrap();
        let completion = loop {
            ring.submit_and_wait(1).unwrap();
            if let Some(completion) = ring.pop_completion() {
                break completion;
            }
        };
        assert_eq!(completion.slot, slot);
        assert_eq!(completion.outcome(), Ok(5));
        assert_eq!(&ring.buffer(slot)[..5], b"hello");

        drop(write_end);
        ring.read(slot, read_end.as_fd()).unwrap();
        ring.submit_and_wait(1).unwrap();
        let eof = ring.pop_completion().unwrap();
        assert_eq!(eof.result, 0);
        ring.remove_slot(slot);
        // The vacant slot is reused.
        assert_eq!(ring.add_slot(4), slot);
    }

    #[test]
    fn poll_reports_readability() {
        let mut ring = Ring::new(8).unwrap();
        let (read_end, write_end) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).unwrap();
        let slot = ring.add_slot(0);
        ring.poll_readable(slot, read_end.as_fd()).unwrap();
        nix::unistd::write(&write_end, b"x").unwrap();
        ring.submit_and_wait(1).unwrap();
        let completion = ring.pop_completion().unwrap();
        assert!(completion.outcome().unwrap() & libc::POLLIN as u32 != 0);
    }

    #[test]
    fn dropping_with_reads_in_flight_cancels_them() {
        let mut ring = Ring::new(2).unwrap();
        let pipes: Vec<_> = (0..5)
            .map(|_| nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap())
            .collect();
        for (read_end, _) in &pipes {
            let slot = ring.add_slot(64);
            // More entries than the queue holds: push submits on the way.
            ring.read(slot, read_end.as_fd()).unwrap();
        }
        ring.submit_and_wait(0).unwrap();
        assert_eq!(ring.in_flight(), 5);
        ring.cancel_all_and_drain();
        assert_eq!(ring.in_flight(), 0);
    }

    #[test]
    fn poll_reports_writability_and_cancel_ends_a_pending_poll() {
        let mut ring = Ring::new(8).unwrap();
        let (read_end, write_end) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).unwrap();
        let slot = ring.add_slot(0);
        ring.poll_writable(slot, write_end.as_fd()).unwrap();
        ring.submit_and_wait(1).unwrap();
        let completion = ring.pop_completion().unwrap();
        assert!(completion.outcome().unwrap() & libc::POLLOUT as u32 != 0);

        // Nothing will ever be written: the poll stays pending until cancelled.
        ring.poll_readable(slot, read_end.as_fd()).unwrap();
        ring.submit_and_wait(0).unwrap();
        ring.cancel(slot).unwrap();
        let completion = loop {
            ring.submit_and_wait(1).unwrap();
            if let Some(completion) = ring.pop_completion() {
                break completion;
            }
        };
        assert_eq!(completion.slot, slot);
        assert_eq!(completion.outcome(), Err(nix::errno::Errno::ECANCELED));
        assert_eq!(ring.in_flight(), 0);
        ring.remove_slot(slot);
    }

    #[test]
    fn a_wait_with_timeout_returns_without_completions() {
        let mut ring = Ring::new(4).unwrap();
        let (read_end, _write_end) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        let slot = ring.add_slot(8);
        ring.read(slot, read_end.as_fd()).unwrap();
        ring.submit_and_wait_timeout(1, Duration::from_millis(10))
            .unwrap();
        assert!(ring.pop_completion().is_none());
        assert_eq!(ring.in_flight(), 1);
    }

    #[test]
    #[should_panic(expected = "non-idle")]
    fn busy_buffers_cannot_be_borrowed() {
        let mut ring = Ring::new(2).unwrap();
        let (read_end, _write_end) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        let slot = ring.add_slot(8);
        ring.read(slot, read_end.as_fd()).unwrap();
        let _ = ring.buffer(slot);
    }
}
