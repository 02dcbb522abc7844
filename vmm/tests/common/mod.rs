//! Tiny guests for KVM tests: hand-assembled machine code (source in comments) wrapped in ELF
//! images written by the tests, plus a serial capture writer.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

/// Guest physical load address of test kernels.
pub const LOAD: u64 = 0x10_0000;

/// Says loudly that `test` did not run and why; fails under CI (see `hull_tests::skip`).
pub use hull_tests::skip;

/// True when /dev/kvm exists; says why a test is skipped otherwise (see [`skip`]). A
/// /dev/kvm that exists but cannot be used makes the test fail later with the VMM's error.
pub fn kvm_available(test: &str) -> bool {
    if Path::new("/dev/kvm").exists() {
        true
    } else {
        skip(test, "/dev/kvm does not exist on this host (no KVM)");
        false
    }
}

/// 64-bit entry: `out 'H'`, out the zero page's boot_flag low byte via RSI (0x55 'U'), `'\n'`,
/// then i8042 reset.
///
/// ```text
/// mov $0x3f8,%dx; mov $'H',%al; out %al,(%dx); mov 0x1fe(%rsi),%al; out %al,(%dx)
/// mov $'\n',%al; out %al,(%dx); mov $0xfe,%al; out %al,$0x64; 1: hlt; jmp 1b
/// ```
pub const SERIAL64: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03, 0xb0, 0x48, 0xee, 0x8a, 0x86, 0xfe, 0x01, 0x00, 0x00, 0xee, 0xb0, 0x0a,
    0xee, 0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd,
];

/// 64-bit: reads the virtio-mmio magic at 0xd000_0000 and prints its 4 bytes, prints
/// '0' + device id, writes 0x42 to 0xd010_0010 and prints the byte read at 0xd010_0020, resets.
///
/// ```text
/// mov $0x3f8,%dx; mov $0xd0000000,%ebx; mov (%rbx),%eax; out %al,(%dx)
/// (shr $8,%eax; out %al,(%dx)) x3; mov 8(%rbx),%eax; add $'0',%al; out %al,(%dx)
/// mov $0xd0100000,%ebx; movl $0x42,0x10(%rbx); mov 0x20(%rbx),%eax; out %al,(%dx)
/// mov $0xfe,%al; out %al,$0x64; 1: hlt; jmp 1b
/// ```
pub const MMIO64: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03, 0xbb, 0x00, 0x00, 0x00, 0xd0, 0x8b, 0x03, 0xee, 0xc1, 0xe8, 0x08, 0xee,
    0xc1, 0xe8, 0x08, 0xee, 0xc1, 0xe8, 0x08, 0xee, 0x8b, 0x43, 0x08, 0x04, 0x30, 0xee, 0xbb, 0x00,
    0x00, 0x10, 0xd0, 0xc7, 0x43, 0x10, 0x42, 0x00, 0x00, 0x00, 0x8b, 0x43, 0x20, 0xee, 0xb0, 0xfe,
    0xe6, 0x64, 0xf4, 0xeb, 0xfd,
];

/// 64-bit: loads the IDT at 0x100200 (descriptor), programs the master PIC (vector base 0x20,
/// only IRQ3 unmasked), masks the slave, prints 'R', `sti; hlt`. The handler at +0x100
/// (vector 0x23) prints 'I' and the low byte of r12, then resets.
///
/// ```text
/// lidt 0x100200; mov $0x11,%al; out %al,$0x20; mov $0x20,%al; out %al,$0x21
/// mov $0x04,%al; out %al,$0x21; mov $0x01,%al; out %al,$0x21; mov $0xf7,%al; out %al,$0x21
/// mov $0xff,%al; out %al,$0xa1; mov $0x3f8,%dx; mov $'R',%al; out %al,(%dx)
/// mov $'S',%r12b; sti; 1: hlt; jmp 1b
/// .org 0x100: mov $0x3f8,%dx; mov $'I',%al; out %al,(%dx); mov %r12b,%al; out %al,(%dx)
/// mov $0xfe,%al; out %al,$0x64; 2: hlt; jmp 2b
/// ```
pub fn irq64() -> Vec<u8> {
    let main = [
        0x0f, 0x01, 0x1c, 0x25, 0x00, 0x02, 0x10, 0x00, 0xb0, 0x11, 0xe6, 0x20, 0xb0, 0x20, 0xe6,
        0x21, 0xb0, 0x04, 0xe6, 0x21, 0xb0, 0x01, 0xe6, 0x21, 0xb0, 0xf7, 0xe6, 0x21, 0xb0, 0xff,
        0xe6, 0xa1, 0x66, 0xba, 0xf8, 0x03, 0xb0, 0x52, 0xee, 0x41, 0xb4, 0x53, 0xfb, 0xf4, 0xeb,
        0xfd,
    ];
    let handler = [
        0x66, 0xba, 0xf8, 0x03, 0xb0, 0x49, 0xee, 0x44, 0x88, 0xe0, 0xee, 0xb0, 0xfe, 0xe6, 0x64,
        0xf4, 0xeb, 0xfd,
    ];
    with_idt(&main, 0x100, &handler)
}

/// 64-bit virtio driver for the virtio-rng at 0xd000_0000 (IRQ5): IDT and PIC as in [`irq64`]
/// (IRQ5 unmasked), then reset, ACKNOWLEDGE, DRIVER, VERSION_1, FEATURES_OK, queue 0 of 16
/// entries (table 0x200000, avail 0x200100, used 0x200200), DRIVER_OK; one 8-byte writable
/// buffer at 0x201000 made available; prints '0' + status (0xf: '?'), `sti`, QueueNotify, hlt.
/// The IRQ5 handler (+0x180) prints 'I', '0' + used idx, '0' + used len, '0' + InterruptStatus,
/// acks it, prints '0' + InterruptStatus again and resets. Expected output: `?I1810`.
///
/// ```text
/// movl $0,0x70(%rbx); movl $1,0x70(%rbx); movl $3,0x70(%rbx); movl $1,0x24(%rbx)
/// movl $1,0x20(%rbx); movl $0,0x24(%rbx); movl $0,0x20(%rbx); movl $0xb,0x70(%rbx)
/// movl $0,0x30(%rbx); movl $16,0x38(%rbx); movl $0x200000,0x80(%rbx); ... 0xa4(%rbx)
/// movl $1,0x44(%rbx); movl $0xf,0x70(%rbx); movq $0x201000,0x200000; movl $8,0x200008
/// movw $2,0x20000c; movw $0,0x20000e; movw $0,0x200100; movw $0,0x200104
/// movw $1,0x200102; mov 0x70(%rbx),%eax; ...; sti; movl $0,0x50(%rbx); 1: hlt; jmp 1b
/// handler: mov 0x200202,%ax; ...; mov 0x200208,%eax; ...; mov 0x60(%rbx),%eax; ...
/// movl $1,0x64(%rbx); mov 0x60(%rbx),%eax; ...; mov $0xfe,%al; out %al,$0x64
/// ```
pub fn virtio_rng64() -> Vec<u8> {
    let main = [
        0x0f, 0x01, 0x1c, 0x25, 0x00, 0x02, 0x10, 0x00, 0xb0, 0x11, 0xe6, 0x20, 0xb0, 0x20, 0xe6,
        0x21, 0xb0, 0x04, 0xe6, 0x21, 0xb0, 0x01, 0xe6, 0x21, 0xb0, 0xdf, 0xe6, 0x21, 0xb0, 0xff,
        0xe6, 0xa1, 0xbb, 0x00, 0x00, 0x00, 0xd0, 0xc7, 0x43, 0x70, 0x00, 0x00, 0x00, 0x00, 0xc7,
        0x43, 0x70, 0x01, 0x00, 0x00, 0x00, 0xc7, 0x43, 0x70, 0x03, 0x00, 0x00, 0x00, 0xc7, 0x43,
        0x24, 0x01, 0x00, 0x00, 0x00, 0xc7, 0x43, 0x20, 0x01, 0x00, 0x00, 0x00, 0xc7, 0x43, 0x24,
        0x00, 0x00, 0x00, 0x00, 0xc7, 0x43, 0x20, 0x00, 0x00, 0x00, 0x00, 0xc7, 0x43, 0x70, 0x0b,
        0x00, 0x00, 0x00, 0xc7, 0x43, 0x30, 0x00, 0x00, 0x00, 0x00, 0xc7, 0x43, 0x38, 0x10, 0x00,
        0x00, 0x00, 0xc7, 0x83, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x20, 0x00, 0xc7, 0x83, 0x84,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xc7, 0x83, 0x90, 0x00, 0x00, 0x00, 0x00, 0x01,
        0x20, 0x00, 0xc7, 0x83, 0x94, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xc7, 0x83, 0xa0,
        0x00, 0x00, 0x00, 0x00, 0x02, 0x20, 0x00, 0xc7, 0x83, 0xa4, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0xc7, 0x43, 0x44, 0x01, 0x00, 0x00, 0x00, 0xc7, 0x43, 0x70, 0x0f, 0x00, 0x00,
        0x00, 0x48, 0xc7, 0x04, 0x25, 0x00, 0x00, 0x20, 0x00, 0x00, 0x10, 0x20, 0x00, 0xc7, 0x04,
        0x25, 0x08, 0x00, 0x20, 0x00, 0x08, 0x00, 0x00, 0x00, 0x66, 0xc7, 0x04, 0x25, 0x0c, 0x00,
        0x20, 0x00, 0x02, 0x00, 0x66, 0xc7, 0x04, 0x25, 0x0e, 0x00, 0x20, 0x00, 0x00, 0x00, 0x66,
        0xc7, 0x04, 0x25, 0x00, 0x01, 0x20, 0x00, 0x00, 0x00, 0x66, 0xc7, 0x04, 0x25, 0x04, 0x01,
        0x20, 0x00, 0x00, 0x00, 0x66, 0xc7, 0x04, 0x25, 0x02, 0x01, 0x20, 0x00, 0x01, 0x00, 0x8b,
        0x43, 0x70, 0x66, 0xba, 0xf8, 0x03, 0x04, 0x30, 0xee, 0xfb, 0xc7, 0x43, 0x50, 0x00, 0x00,
        0x00, 0x00, 0xf4, 0xeb, 0xfd,
    ];
    let handler = [
        0x66, 0xba, 0xf8, 0x03, 0xb0, 0x49, 0xee, 0x66, 0x8b, 0x04, 0x25, 0x02, 0x02, 0x20, 0x00,
        0x04, 0x30, 0xee, 0x8b, 0x04, 0x25, 0x08, 0x02, 0x20, 0x00, 0x04, 0x30, 0xee, 0x8b, 0x43,
        0x60, 0x04, 0x30, 0xee, 0xc7, 0x43, 0x64, 0x01, 0x00, 0x00, 0x00, 0x8b, 0x43, 0x60, 0x04,
        0x30, 0xee, 0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd,
    ];
    with_idt(&main, 0x180, &handler)
}

/// `main` at [`LOAD`], `handler` at `LOAD + handler_at` (below 0x200), the IDT descriptor at
/// +0x200 and a 256-entry IDT at +0x1000 sending every vector to the handler.
fn with_idt(main: &[u8], handler_at: usize, handler: &[u8]) -> Vec<u8> {
    assert!(main.len() <= handler_at && handler_at + handler.len() <= 0x200);
    let mut code = main.to_vec();
    code.resize(handler_at, 0);
    code.extend_from_slice(handler);
    // IDT descriptor at +0x200: limit, base 0x101000.
    code.resize(0x200, 0);
    let idt_base = LOAD + 0x1000;
    code.extend_from_slice(&(256u16 * 16 - 1).to_le_bytes());
    code.extend_from_slice(&idt_base.to_le_bytes());
    // IDT at +0x1000: every vector -> handler (64-bit interrupt gates, CS 0x08).
    code.resize(0x1000, 0);
    let handler = LOAD + handler_at as u64;
    for _ in 0..256 {
        code.extend_from_slice(&(handler as u16).to_le_bytes());
        code.extend_from_slice(&0x08u16.to_le_bytes());
        code.push(0);
        code.push(0x8e);
        code.extend_from_slice(&((handler >> 16) as u16).to_le_bytes());
        code.extend_from_slice(&((handler >> 32) as u32).to_le_bytes());
        code.extend_from_slice(&0u32.to_le_bytes());
    }
    code
}

/// 64-bit: polls the UART's line status until a byte arrives, echoes it, resets.
///
/// ```text
/// mov $0x3fd,%dx; 1: in (%dx),%al; test $1,%al; jz 1b; mov $0x3f8,%dx; in (%dx),%al
/// out %al,(%dx); mov $0xfe,%al; out %al,$0x64; 2: hlt; jmp 2b
/// ```
pub const ECHO64: &[u8] = &[
    0x66, 0xba, 0xfd, 0x03, 0xec, 0xa8, 0x01, 0x74, 0xfb, 0x66, 0xba, 0xf8, 0x03, 0xec, 0xee, 0xb0,
    0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd,
];

/// 32-bit PVH entry: prints 'P'; if `[ebx]` holds the hvm_start_info magic prints 'V' and the
/// first byte of the command line (`cmdline_paddr` at ebx+24); resets.
///
/// ```text
/// mov $0x3f8,%dx; mov $'P',%al; out %al,(%dx); cmpl $0x336ec578,(%ebx); jne 1f
/// mov $'V',%al; out %al,(%dx); mov 24(%ebx),%esi; mov (%esi),%al; out %al,(%dx)
/// 1: mov $0xfe,%al; out %al,$0x64; 2: hlt; jmp 2b
/// ```
pub const PVH32: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03, 0xb0, 0x50, 0xee, 0x81, 0x3b, 0x78, 0xc5, 0x6e, 0x33, 0x75, 0x09, 0xb0,
    0x56, 0xee, 0x8b, 0x73, 0x18, 0x8a, 0x06, 0xee, 0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd,
];

/// An ELF64 executable with `code` loaded at [`LOAD`] and entered there; with `pvh` it carries
/// a Xen PVH note (XEN_ELFNOTE_PHYS32_ENTRY) pointing at [`LOAD`].
pub fn elf(code: &[u8], pvh: bool) -> Vec<u8> {
    const CODE_OFF: u64 = 0x1000;
    const NOTE_OFF: u64 = 0x100;
    let phnum: u16 = if pvh { 2 } else { 1 };
    let mut b = Vec::new();
    b.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    b.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    b.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&LOAD.to_le_bytes()); // e_entry
    b.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    b.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    b.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    b.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
    b.extend_from_slice(&56u16.to_le_bytes()); // e_phentsize
    b.extend_from_slice(&phnum.to_le_bytes());
    b.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    b.extend_from_slice(&0u16.to_le_bytes());
    b.extend_from_slice(&0u16.to_le_bytes());
    let phdr = |b: &mut Vec<u8>, kind: u32, off: u64, addr: u64, size: u64| {
        b.extend_from_slice(&kind.to_le_bytes());
        b.extend_from_slice(&7u32.to_le_bytes()); // RWX
        b.extend_from_slice(&off.to_le_bytes());
        b.extend_from_slice(&addr.to_le_bytes());
        b.extend_from_slice(&addr.to_le_bytes());
        b.extend_from_slice(&size.to_le_bytes());
        b.extend_from_slice(&size.to_le_bytes());
        b.extend_from_slice(&0x1000u64.to_le_bytes());
    };
    phdr(&mut b, 1, CODE_OFF, LOAD, code.len() as u64); // PT_LOAD
    let mut note = Vec::new();
    note.extend_from_slice(&4u32.to_le_bytes()); // namesz
    note.extend_from_slice(&4u32.to_le_bytes()); // descsz
    note.extend_from_slice(&18u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
    note.extend_from_slice(b"Xen\0");
    note.extend_from_slice(&(LOAD as u32).to_le_bytes());
    if pvh {
        phdr(&mut b, 4, NOTE_OFF, 0, note.len() as u64); // PT_NOTE
    }
    b.resize(NOTE_OFF as usize, 0);
    if pvh {
        b.extend_from_slice(&note);
    }
    b.resize(CODE_OFF as usize, 0);
    b.extend_from_slice(code);
    b
}

/// Writes `bytes` to a fresh file in a temporary directory (kept alive by the returned guard).
pub fn write_temp(name: &str, bytes: &[u8]) -> (vmm_sys_util::tempdir::TempDir, PathBuf) {
    let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/hull-vmm-test").unwrap();
    let path = dir.as_path().join(name);
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

/// Serial output collected in memory; optionally signals an eventfd when a byte appears.
#[derive(Clone, Default)]
pub struct Capture {
    buf: Arc<Mutex<Vec<u8>>>,
    trigger: Arc<Mutex<Option<(u8, EventFd)>>>,
}

impl Capture {
    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf.lock().unwrap()).into_owned()
    }

    /// Writes 1 to `evt` the first time `byte` is output.
    pub fn on_byte(&self, byte: u8, evt: EventFd) {
        *self.trigger.lock().unwrap() = Some((byte, evt));
    }
}

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.lock().unwrap().extend_from_slice(b);
        let mut t = self.trigger.lock().unwrap();
        if let Some((byte, evt)) = t.as_ref() {
            if b.contains(byte) {
                evt.write(1)?;
                *t = None;
            }
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
