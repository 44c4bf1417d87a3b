/*
 * powercut.c — an LD_PRELOAD shim for the R2 power-cut scenario (tests/faults/power.rs).
 *
 * It models a disk that keeps a file's data only once the file was synced: fsync(2) and
 * fdatasync(2) are passed to the real calls, and when one succeeds on a regular file directly
 * inside the directory named by $POWERCUT_DIR, the file's whole current content is copied to
 * $POWERCUT_DIR/.snapshots/<basename> (written to a temporary name, then renamed, so a kill -9
 * mid-copy leaves the previous snapshot). The snapshot is complete before the sync call
 * returns, so before SQLite's COMMIT returns and before the daemon logs the commit. When the
 * directory itself is synced, the snapshots of files deleted since are dropped: from then on
 * the deletion is on disk too. The harness then simulates a power cut: kill -9, replace every
 * file by its snapshot (bringing back a deleted one whose deletion was never synced), delete
 * the files that have none (never synced, never on disk) and the -shm.
 *
 * SQLite uses neither sync_file_range(2) nor msync(2) on the queue (checked with strace; it
 * never writes through mmap, and the -shm, its only mapping, is discarded at a cut anyway), so
 * only fsync and fdatasync are intercepted. Anything that goes wrong here (no $POWERCUT_DIR, a
 * file elsewhere, a failed copy) leaves things as they are: the shim never changes the result
 * or errno the caller sees, and never fails the daemon.
 *
 * Built by the test at run time:
 *   cc -shared -fPIC -O2 -pthread -o powercut.so powercut.c -ldl
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

typedef int (*sync_fn)(int);

/* One sync-and-snapshot at a time, so a slow copy of an older sync can never be renamed over
 * the snapshot of a newer one. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static sync_fn real(const char *name) {
    return (sync_fn)dlsym(RTLD_NEXT, name);
}

/* $POWERCUT_DIR without trailing slashes, resolved (so it compares with /proc/self/fd links);
 * NULL when unset or unresolvable. */
static const char *watched_dir(void) {
    static char dir[PATH_MAX];
    static int state; /* 0 unknown, 1 set, 2 none; only read under the lock */
    if (state == 0) {
        const char *env = getenv("POWERCUT_DIR");
        state = 2;
        if (env != NULL && *env != '\0' && realpath(env, dir) != NULL) {
            state = 1;
        }
    }
    return state == 1 ? dir : NULL;
}

static int copy_all(int src, int dst) {
    char buf[1 << 16];
    off_t off = 0;
    for (;;) {
        ssize_t n = pread(src, buf, sizeof buf, off);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (n == 0) return 0;
        ssize_t done = 0;
        while (done < n) {
            ssize_t w = write(dst, buf + done, (size_t)(n - done));
            if (w < 0) {
                if (errno == EINTR) continue;
                return -1;
            }
            done += w;
        }
        off += n;
    }
}

/* Is `path` (resolved) the watched directory itself? */
static int is_watched_dir(const char *dir, const char *path) {
    return strcmp(dir, path) == 0;
}

/* The watched directory was synced: its entries are now on disk as they are, so a file that
 * was deleted since its last sync no longer comes back at a cut (its snapshot goes). Until the
 * directory is synced, an unlinked file's snapshot stays, as the unlink may not have reached
 * the disk (SQLite deletes a rollback journal this way and syncs the directory only when it
 * next creates a journal or WAL). */
static void directory_synced(const char *dir) {
    char snapdir[PATH_MAX];
    if (snprintf(snapdir, sizeof snapdir, "%s/.snapshots", dir) >= (int)sizeof snapdir) return;
    DIR *d = opendir(snapdir);
    if (d == NULL) return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        char live[PATH_MAX], snap[PATH_MAX];
        if (snprintf(live, sizeof live, "%s/%s", dir, e->d_name) >= (int)sizeof live) continue;
        if (snprintf(snap, sizeof snap, "%s/%s", snapdir, e->d_name) >= (int)sizeof snap) continue;
        struct stat st;
        if (lstat(live, &st) != 0 && errno == ENOENT) unlink(snap);
    }
    closedir(d);
}

static void snapshot(int fd) {
    const char *dir = watched_dir();
    if (dir == NULL) return;
    struct stat st;
    if (fstat(fd, &st) != 0) return;
    char link[64];
    char path[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0 || (size_t)n >= sizeof path - 1) return;
    path[n] = '\0';
    if (S_ISDIR(st.st_mode)) {
        if (is_watched_dir(dir, path)) directory_synced(dir);
        return;
    }
    if (!S_ISREG(st.st_mode)) return;
    size_t dl = strlen(dir);
    if (strncmp(path, dir, dl) != 0 || path[dl] != '/') return;
    const char *base = path + dl + 1;
    /* Direct children only (never .snapshots/ itself); not an unlinked file. */
    if (*base == '\0' || *base == '.' || strchr(base, '/') != NULL) return;
    if (strstr(base, " (deleted)") != NULL) return;

    char snapdir[PATH_MAX], tmp[PATH_MAX], dst[PATH_MAX];
    if (snprintf(snapdir, sizeof snapdir, "%s/.snapshots", dir) >= (int)sizeof snapdir) return;
    if (snprintf(dst, sizeof dst, "%s/%s", snapdir, base) >= (int)sizeof dst) return;
    if (snprintf(tmp, sizeof tmp, "%s/.tmp-%ld-%s", snapdir, (long)syscall(SYS_gettid), base)
        >= (int)sizeof tmp)
        return;
    if (mkdir(snapdir, 0700) != 0 && errno != EEXIST) return;

    /* Reopen through /proc so the copy has its own offset (the caller's is untouched). */
    int src = open(link, O_RDONLY | O_CLOEXEC);
    if (src < 0) return;
    int out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (out < 0) {
        close(src);
        return;
    }
    int ok = copy_all(src, out) == 0;
    close(src);
    if (close(out) != 0) ok = 0;
    if (!ok || rename(tmp, dst) != 0) unlink(tmp);
}

static int synced(const char *name, int fd) {
    sync_fn f = real(name);
    if (f == NULL) {
        errno = ENOSYS;
        return -1;
    }
    pthread_mutex_lock(&lock);
    int rc = f(fd);
    if (rc == 0) {
        int saved = errno;
        snapshot(fd);
        errno = saved;
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

int fsync(int fd) {
    return synced("fsync", fd);
}

int fdatasync(int fd) {
    return synced("fdatasync", fd);
}
