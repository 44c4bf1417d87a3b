/*
 * enospc.c — an LD_PRELOAD shim for the R3 disk-full scenario (tests/faults/disk.rs) where the
 * tests cannot mount a small tmpfs (not root).
 *
 * It models a filesystem that has run out of space: while the file named by $ENOSPC_FLAG
 * exists, a write that would make a regular file directly inside $ENOSPC_DIR longer fails with
 * ENOSPC, exactly the errno a full filesystem gives; a write within a file's current size goes
 * through, as it would into blocks already allocated. Removing the flag frees the space. The
 * harness creates and removes the flag, so the fault starts and ends when the scenario says,
 * whatever the number of writes before (unlike a syscall-count trigger).
 *
 * Intercepted: write, pwrite, pwrite64, writev (SQLite writes the WAL and the database with
 * pwrite64, the queue's acknowledgement journal uses write). SQLite does not preallocate
 * (no fallocate without a chunk size), and a growing ftruncate allocates nothing on a real
 * filesystem either, so neither is touched. Without both variables, or for any other file, the
 * real call runs unchanged; the shim never fails a call for a reason of its own.
 *
 * Built by the test at run time:
 *   cc -shared -fPIC -O2 -pthread -o enospc.so enospc.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

typedef ssize_t (*write_fn)(int, const void *, size_t);
typedef ssize_t (*pwrite_fn)(int, const void *, size_t, off_t);
typedef ssize_t (*pwrite64_fn)(int, const void *, size_t, off64_t);
typedef ssize_t (*writev_fn)(int, const struct iovec *, int);

/* The next definition of `name` (libc's), looked up once. */
static void *next(void **cache, const char *name) {
    void *f = __atomic_load_n(cache, __ATOMIC_ACQUIRE);
    if (f == NULL) {
        f = dlsym(RTLD_NEXT, name);
        __atomic_store_n(cache, f, __ATOMIC_RELEASE);
    }
    return f;
}

static const char *env_or_null(const char *name) {
    const char *v = getenv(name);
    return (v != NULL && *v != '\0') ? v : NULL;
}

/* Would `len` bytes at `off` (or at the current offset when `off` < 0) grow a regular file
 * directly inside $ENOSPC_DIR while $ENOSPC_FLAG exists? errno is preserved. */
static int full_for(int fd, long long off, size_t len) {
    int saved = errno;
    int full = 0;
    const char *flag = env_or_null("ENOSPC_FLAG");
    const char *dir_env = env_or_null("ENOSPC_DIR");
    char dir[PATH_MAX];
    if (flag == NULL || dir_env == NULL || len == 0 || access(flag, F_OK) != 0) goto out;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) goto out;
    if (realpath(dir_env, dir) == NULL) goto out;
    char link[64], path[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0 || (size_t)n >= sizeof path - 1) goto out;
    path[n] = '\0';
    size_t dl = strlen(dir);
    if (strncmp(path, dir, dl) != 0 || path[dl] != '/' || strchr(path + dl + 1, '/') != NULL)
        goto out;
    if (off < 0) {
        int fl = fcntl(fd, F_GETFL);
        if (fl >= 0 && (fl & O_APPEND)) {
            off = (long long)st.st_size;
        } else {
            off_t cur = lseek(fd, 0, SEEK_CUR);
            if (cur < 0) goto out;
            off = (long long)cur;
        }
    }
    full = off + (long long)len > (long long)st.st_size;
out:
    errno = saved;
    return full;
}

ssize_t write(int fd, const void *buf, size_t len) {
    static void *cache;
    write_fn f = (write_fn)next(&cache, "write");
    if (f == NULL) {
        errno = ENOSYS;
        return -1;
    }
    if (full_for(fd, -1, len)) {
        errno = ENOSPC;
        return -1;
    }
    return f(fd, buf, len);
}

ssize_t pwrite(int fd, const void *buf, size_t len, off_t off) {
    static void *cache;
    pwrite_fn f = (pwrite_fn)next(&cache, "pwrite");
    if (f == NULL) {
        errno = ENOSYS;
        return -1;
    }
    if (off >= 0 && full_for(fd, (long long)off, len)) {
        errno = ENOSPC;
        return -1;
    }
    return f(fd, buf, len, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t len, off64_t off) {
    static void *cache;
    pwrite64_fn f = (pwrite64_fn)next(&cache, "pwrite64");
    if (f == NULL) {
        errno = ENOSYS;
        return -1;
    }
    if (off >= 0 && full_for(fd, (long long)off, len)) {
        errno = ENOSPC;
        return -1;
    }
    return f(fd, buf, len, off);
}

ssize_t writev(int fd, const struct iovec *iov, int cnt) {
    static void *cache;
    writev_fn f = (writev_fn)next(&cache, "writev");
    if (f == NULL) {
        errno = ENOSYS;
        return -1;
    }
    size_t len = 0;
    for (int i = 0; i < cnt && iov != NULL; i++) len += iov[i].iov_len;
    if (full_for(fd, -1, len)) {
        errno = ENOSPC;
        return -1;
    }
    return f(fd, iov, cnt);
}
