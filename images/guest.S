# crossmig test guest: a single 512-byte x86 boot sector.
#
# Assemble with GNU as (AT&T syntax), choosing the workload at assembly time:
#
#   as --32 --defsym MODE=0 -o sweep.o guest.S     # "sweep" workload
#   as --32 --defsym MODE=1 -o fill.o  guest.S     # "fill"  workload
#   as --32 --defsym MODE=2 -o random.o guest.S    # "random" workload
#   ld -m elf_i386 -Ttext=0x7c00 -e _start -o x.elf x.o
#   objcopy -O binary -j .text x.elf x.bin         # exactly 512 bytes
#
# The BIOS loads the sector at 0x7c00 and jumps to it in real mode.  We
# enable A20, switch to flat 32-bit protected mode (no paging, no IDT,
# interrupts off for good) and run the selected workload.  See README.md
# for the serial protocol and the memory invariants the harness checks.
#
# Written from scratch for crossmig; no third-party code.

        .ifndef MODE
        .error "assemble with --defsym MODE=0 (sweep), 1 (fill) or 2 (random)"
        .endif
        .if (MODE != 0) && (MODE != 1) && (MODE != 2)
        .error "MODE must be 0 (sweep), 1 (fill) or 2 (random)"
        .endif

        .set COM1,          0x3f8
        .set COM1_LSR,      COM1 + 5
        .set LSR_THRE,      0x20
        .set CMOS_INDEX,    0x70
        .set CMOS_DATA,     0x71
        .set LOW_START,     0x00100000      # 1 MiB: first byte we touch
        .set SWEEP_CAP,     0x06400000      # 100 MiB: sweep stops here at most
        .set RAM_CAP,       0xb0000000      # q35 never has low RAM above this
        .set PAGE,          4096
        .set PASSES_PER_B,  64              # power of two (mask below)
        .set FILL_SEED,     0x2545f491      # xorshift32 state before 1st step
        .set RAND_A,        1664525         # LCG multiplier (= 1 mod 4)
        .set RAND_C,        1013904223      # LCG increment (odd)
        .set DELAY_OFFSET,  496             # sector offset of the delay word
        .set INFO_ADDR,     0x500           # info block (free BDA-adjacent RAM)
        .set STACK_TOP,     0x7c00

        .set SEL_CODE32,    0x08
        .set SEL_DATA32,    0x10

        .text
        .globl _start

# ---------------------------------------------------------------- real mode
        .code16
_start:
        cli
        cld
        ljmp    $0, $1f                 # normalise CS:IP to 0000:7cxx
1:      xorw    %ax, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        movw    $STACK_TOP, %sp

        # A20 via the "fast A20" system control port (bit 1), never touching
        # bit 0 (which would reset the machine).
        inb     $0x92, %al
        orb     $0x02, %al
        andb    $0xfe, %al
        outb    %al, $0x92

        lgdt    gdt_ptr
        movl    %cr0, %eax
        orl     $1, %eax                # CR0.PE
        movl    %eax, %cr0
        ljmp    $SEL_CODE32, $pm32

# ---------------------------------------------------------- protected mode
        .code32
pm32:
        movl    $SEL_DATA32, %eax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %fs
        movw    %ax, %gs
        movw    %ax, %ss
        movl    $STACK_TOP, %esp

        # ---- top of RAM below 4 GiB from the CMOS NVRAM ----
        # 0x34/0x35: RAM above 16 MiB in 64 KiB units (0 if <= 16 MiB)
        movb    $0x35, %al
        call    cmos_read
        movb    %al, %ah
        movb    $0x34, %al
        call    cmos_read
        movzwl  %ax, %esi
        testl   %esi, %esi
        jz      small_ram
        cmpl    $((RAM_CAP - 0x01000000) >> 16), %esi
        jbe     1f
        movl    $((RAM_CAP - 0x01000000) >> 16), %esi
1:      shll    $16, %esi
        addl    $0x01000000, %esi
        jmp     have_top
small_ram:
        # 0x30/0x31: RAM above 1 MiB in KiB (caps at 64 MiB - 1 KiB)
        movb    $0x31, %al
        call    cmos_read
        movb    %al, %ah
        movb    $0x30, %al
        call    cmos_read
        movzwl  %ax, %esi
        shll    $10, %esi
        addl    $LOW_START, %esi
have_top:
        andl    $~(PAGE - 1), %esi      # %esi = top of low RAM (page aligned)

        # info block at INFO_ADDR: "XMIG", mode, top, end (end filled below)
        movl    $0x47494d58, INFO_ADDR
        movl    $MODE, INFO_ADDR + 4
        movl    %esi, INFO_ADDR + 8

.if MODE == 0
# ------------------------------------------------------------ MODE 0: sweep
        cmpl    $SWEEP_CAP, %esi
        jbe     1f
        movl    $SWEEP_CAP, %esi        # %esi = END
1:      movl    %esi, INFO_ADDR + 12
        # The BIOS leaves tables near the top of RAM; when the sweep reaches
        # that far those pages would not start at 0.  Zero byte 0 of every
        # swept page first so the invariant holds from the very first pass.
        movl    $LOW_START, %edi
2:      movb    $0, (%edi)
        addl    $PAGE, %edi
        cmpl    %esi, %edi
        jb      2b
        movb    $'A', %al
        call    putc
        xorl    %ebp, %ebp              # completed passes
sweep_pass:
        movl    $LOW_START, %edi
sweep_page:
        incb    (%edi)
        addl    $PAGE, %edi
        cmpl    %esi, %edi
        jb      sweep_page
        incl    %ebp
        testl   $(PASSES_PER_B - 1), %ebp
        jnz     sweep_pass
        movb    $'B', %al
        call    putc
        jmp     sweep_pass
.elseif MODE == 2
# ----------------------------------------------------------- MODE 2: random
        # Every page of [1 MiB, top) once per pass, in the order of a
        # full-period LCG x -> (A*x + C) mod 2^k over the page indices
        # (2^k = pages rounded up to a power of two; indices >= pages are
        # skipped). The order is the same every pass.
        movl    %esi, INFO_ADDR + 12    # END = top of low RAM
        movl    $LOW_START, %edi
2:      movb    $0, (%edi)
        addl    $PAGE, %edi
        cmpl    %esi, %edi
        jb      2b
        subl    $LOW_START, %esi
        shrl    $12, %esi               # %esi = pages
        movl    $1, %ebx
3:      cmpl    %esi, %ebx
        jae     4f
        shll    $1, %ebx
        jmp     3b
4:      decl    %ebx                    # %ebx = 2^k - 1
        movb    $'A', %al
        call    putc
        xorl    %edi, %edi              # x, the LCG state
        xorl    %ebp, %ebp              # steps done in this pass
rand_step:
        imull   $RAND_A, %edi, %edi
        addl    $RAND_C, %edi
        andl    %ebx, %edi
        cmpl    %esi, %edi
        jae     5f
        movl    %edi, %eax
        shll    $12, %eax
        incb    LOW_START(%eax)
        movl    rand_delay, %ecx        # busy-wait iterations per touch
        jecxz   5f
6:      loop    6b
5:      cmpl    %ebx, %ebp
        je      7f
        incl    %ebp
        jmp     rand_step
7:      xorl    %ebp, %ebp              # 2^k steps: one pass, back at x = 0
        movb    $'B', %al
        call    putc
        jmp     rand_step
.else
# ------------------------------------------------------------- MODE 1: fill
        movl    %esi, INFO_ADDR + 12
        movb    $'A', %al
        call    putc
        movl    $LOW_START, %edi
        movl    $FILL_SEED, %eax
fill_word:
        movl    %eax, %edx              # xorshift32 (13, 17, 5)
        shll    $13, %edx
        xorl    %edx, %eax
        movl    %eax, %edx
        shrl    $17, %edx
        xorl    %edx, %eax
        movl    %eax, %edx
        shll    $5, %edx
        xorl    %edx, %eax
        movl    %eax, (%edi)
        addl    $4, %edi
        cmpl    %esi, %edi
        jb      fill_word
        movb    $'F', %al
        call    putc
idle:
        cli
        hlt
        jmp     idle
.endif

# ------------------------------------------------------------- subroutines
# cmos_read: %al = register index -> %al = value.  Bit 7 of the index keeps
# NMI masked while we talk to the RTC.
cmos_read:
        orb     $0x80, %al
        outb    %al, $CMOS_INDEX
        inb     $CMOS_DATA, %al
        ret

# putc: write %al to COM1 once the transmit holding register is empty.
# (With no UART present the status port reads 0xff, so this cannot hang.)
putc:
        pushl   %edx
        pushl   %eax
        movw    $COM1_LSR, %dx
1:      inb     %dx, %al
        testb   $LSR_THRE, %al
        jz      1b
        popl    %eax
        movw    $COM1, %dx
        outb    %al, %dx
        popl    %edx
        ret

# ------------------------------------------------------------------- data
        .p2align 3
gdt:
        .quad   0                       # null descriptor
        .quad   0x00cf9a000000ffff      # 0x08: code, base 0, 4 GiB, 32-bit
        .quad   0x00cf92000000ffff      # 0x10: data, base 0, 4 GiB, 32-bit
gdt_end:
gdt_ptr:
        .word   gdt_end - gdt - 1
        .long   gdt

# ------------------------------------------- random: patchable delay word
        .org    DELAY_OFFSET
rand_delay:
        .long   0                       # the harness may patch this

# ------------------------------------------------------- boot signature
        .org    510
        .byte   0x55, 0xaa
