/*
 * Test aid for cross/qemu-check.sh and cross/test-under-qemu.sh, never shipped.
 *
 * qemu-user 7.2 (Debian 12) does not translate the termios2 ioctls TCGETS2/TCSETS2/TCSETSW2/
 * TCSETSF2 (distributions still carried patches for them in qemu 10.1): it answers ENOSYS. serialport (under tokio-serial) uses
 * them on Linux to set the baud rate, so opening any serial port -- the demo's and the tests'
 * pseudo-terminals included -- fails under qemu with "Function not implemented". A real ARM
 * kernel has them.
 *
 * Preloaded into the ARM process (qemu-<arch> -E LD_PRELOAD=...), this ioctl() answers the
 * termios2 requests with the classic TCGETS/TCSETS*, which qemu does translate: a BOTHER speed
 * is mapped to its Bxxx constant (standard rates only, else EINVAL). Everything else goes to
 * libc's ioctl unchanged.
 */
#define _GNU_SOURCE
#include <asm/ioctls.h>
#include <asm/termbits.h>
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

static const struct { unsigned int code, rate; } speeds[] = {
    {B0, 0},           {B50, 50},         {B75, 75},         {B110, 110},
    {B134, 134},       {B150, 150},       {B200, 200},       {B300, 300},
    {B600, 600},       {B1200, 1200},     {B1800, 1800},     {B2400, 2400},
    {B4800, 4800},     {B9600, 9600},     {B19200, 19200},   {B38400, 38400},
    {B57600, 57600},   {B115200, 115200}, {B230400, 230400}, {B460800, 460800},
    {B500000, 500000}, {B576000, 576000}, {B921600, 921600}, {B1000000, 1000000},
};

static int rate_of(unsigned int code, unsigned int *rate) {
    for (unsigned i = 0; i < sizeof speeds / sizeof speeds[0]; i++)
        if (speeds[i].code == code) { *rate = speeds[i].rate; return 0; }
    return -1;
}

static int code_of(unsigned int rate, unsigned int *code) {
    for (unsigned i = 0; i < sizeof speeds / sizeof speeds[0]; i++)
        if (speeds[i].rate == rate) { *code = speeds[i].code; return 0; }
    return -1;
}

/*
 * The ARM process keeps the shim, but its children do not inherit LD_PRELOAD: an x86 child
 * (sh, kill, strace) would warn that it cannot preload an ARM library, and an ARM child started
 * through cross/test-under-qemu.sh's binfmt wrapper gets the shim from the wrapper.
 */
__attribute__((constructor)) static void forget_preload(void) { unsetenv("LD_PRELOAD"); }

typedef int (*ioctl_fn)(int, unsigned long, ...);

static int real_ioctl(int fd, unsigned long req, void *arg) {
    static ioctl_fn next;
    if (!next) next = (ioctl_fn)dlsym(RTLD_NEXT, "ioctl");
    if (!next) { errno = ENOSYS; return -1; }
    return next(fd, req, arg);
}

int ioctl(int fd, unsigned long req, ...) {
    va_list ap;
    va_start(ap, req);
    void *arg = va_arg(ap, void *);
    va_end(ap);

    if (req == TCGETS2) {
        struct termios t;
        struct termios2 *t2 = arg;
        if (real_ioctl(fd, TCGETS, &t) != 0) return -1;
        memset(t2, 0, sizeof *t2);
        t2->c_iflag = t.c_iflag;
        t2->c_oflag = t.c_oflag;
        t2->c_cflag = t.c_cflag;
        t2->c_lflag = t.c_lflag;
        t2->c_line = t.c_line;
        memcpy(t2->c_cc, t.c_cc, sizeof t.c_cc < sizeof t2->c_cc ? sizeof t.c_cc : sizeof t2->c_cc);
        unsigned int out = 0, in;
        rate_of(t.c_cflag & CBAUD, &out);
        unsigned int icode = (t.c_cflag & CIBAUD) >> IBSHIFT;
        if (icode == 0 || rate_of(icode, &in) != 0) in = out;
        t2->c_ospeed = out;
        t2->c_ispeed = in;
        return 0;
    }
    if (req == TCSETS2 || req == TCSETSW2 || req == TCSETSF2) {
        const struct termios2 *t2 = arg;
        struct termios t;
        memset(&t, 0, sizeof t);
        t.c_iflag = t2->c_iflag;
        t.c_oflag = t2->c_oflag;
        t.c_cflag = t2->c_cflag;
        t.c_lflag = t2->c_lflag;
        t.c_line = t2->c_line;
        memcpy(t.c_cc, t2->c_cc, sizeof t.c_cc < sizeof t2->c_cc ? sizeof t.c_cc : sizeof t2->c_cc);
        if ((t.c_cflag & CBAUD) == BOTHER) {
            unsigned int code;
            if (code_of(t2->c_ospeed, &code) != 0) { errno = EINVAL; return -1; }
            t.c_cflag = (t.c_cflag & ~CBAUD) | code;
        }
        if (((t.c_cflag & CIBAUD) >> IBSHIFT) == BOTHER) {
            unsigned int code;
            if (t2->c_ispeed == t2->c_ospeed) code = 0; /* 0: input speed = output speed */
            else if (code_of(t2->c_ispeed, &code) != 0) { errno = EINVAL; return -1; }
            t.c_cflag = (t.c_cflag & ~CIBAUD) | (code << IBSHIFT);
        }
        unsigned long classic = req == TCSETS2 ? TCSETS : req == TCSETSW2 ? TCSETSW : TCSETSF;
        return real_ioctl(fd, classic, &t);
    }
    return real_ioctl(fd, req, arg);
}
