//! The seccomp filter every instance runs under, stacked on whatever the
//! backend already applies (Docker's profile): `io_uring_setup`,
//! `io_uring_enter` and `io_uring_register` fail with ENOSYS, so libraries
//! fall back to epoll. io_uring submissions bypass per-syscall filtering
//! and have been a steady source of kernel escapes; Docker's default
//! profile blocks them since Docker 25 (moby PR 46762), not in 20.10.
//!
//! The process backend installs it between fork and exec ([`install`]);
//! the Docker backend's runtime installs the same program itself (the
//! `--block-io-uring` flag of `ol_runtime.py`) before loading a function.

/// io_uring's syscall numbers: the same on every architecture (they came
/// after the tables were unified).
const IO_URING: [u32; 3] = [425, 426, 427];
/// The x32 ABI's bit in a syscall number on x86_64.
const X32_BIT: u32 = 0x4000_0000;

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_ALU_AND_K: u16 = 0x54;
const BPF_JEQ_K: u16 = 0x15;
const BPF_RET_K: u16 = 0x06;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;

/// The filter: load the syscall number (offset 0 of `seccomp_data`), clear
/// the x32 bit, ENOSYS for io_uring, allow the rest.
fn program() -> [libc::sock_filter; 7] {
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    [
        op(BPF_LD_W_ABS, 0, 0, 0),
        op(BPF_ALU_AND_K, 0, 0, !X32_BIT),
        op(BPF_JEQ_K, 3, 0, IO_URING[0]),
        op(BPF_JEQ_K, 2, 0, IO_URING[1]),
        op(BPF_JEQ_K, 1, 0, IO_URING[2]),
        op(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
        op(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
    ]
}

/// A filter made before the fork, installed in the child.
pub struct Filter {
    program: [libc::sock_filter; 7],
}

impl Filter {
    pub fn new() -> Filter {
        Filter { program: program() }
    }

    /// Sets no_new_privs (required for an unprivileged filter, and no
    /// setuid binary may raise the instance's privileges anyway) and
    /// installs the filter. Async-signal-safe: two prctl calls.
    pub fn install(&self) -> std::io::Result<()> {
        let prog = libc::sock_fprog {
            len: self.program.len() as u16,
            filter: self.program.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: prctl with a valid, live sock_fprog.
        unsafe {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &prog as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

impl Default for Filter {
    fn default() -> Self {
        Filter::new()
    }
}
