/*
 * spack-appimage runtime: an AppImage type-2 runtime for clusters.
 *
 * It finds the squashfs appended to itself (at the end of its own ELF data), then
 * either mounts it with FUSE (squashfuse's low-level ops on libfuse 3, both linked
 * statically) or extracts it, and runs AppRun from it. Compatible with the official
 * runtime's flags, environment variables and exit codes (README: "The runtime"), and
 * unlike it:
 *
 *  - one FUSE mount per user, image and node, shared by simultaneous launches: the
 *    first launcher starts a server; every running app holds a shared lock on the
 *    mount's "users" file; the server unmounts when nobody has held it for a moment;
 *    whatever ends the server, for root and users alike, no dead mount and nothing of
 *    it stays (unmount.c: after TERM, INT or HUP it unmounts as soon as no app uses
 *    the mount; a guardian clears up after a KILL or a crash; a failed mount removes
 *    its directory);
 *  - a multithreaded FUSE loop;
 *  - no FUSE (no /dev/fuse, no fusermount, mount refused): extraction, with one line
 *    on stderr (silenced by APPIMAGE_QUIET);
 *  - extraction into a cache keyed by an image ID written at build time and by what
 *    identifies the squashfs now (verify.c; no hash of the whole file at each start),
 *    built in a private directory and renamed into place under a lock, so simultaneous
 *    starters wait instead of failing; a tree is removed only when no process uses it
 *    (shared/exclusive locks), and kept with NO_CLEANUP;
 *  - in extract mode the app is a child: INT, TERM, HUP, QUIT, USR1, USR2 and CONT are
 *    forwarded, the exit status passes through, death by signal N exits with 128+N;
 *  - safe on a shared node (privdir.c, extract.c): its per-user directories sit on
 *    paths no other user can change and are used by descriptor; a name another user
 *    took gives way to a private directory of its own; <image>.home/.config are used
 *    only when they are the user's, closed to others;
 *  - a damaged image never crashes it (verify.c): its superblock and metadata, or all
 *    of it for an extraction, are checked against CRCs recorded at build time once per
 *    mount or extraction, before squashfuse reads them; an image without CRCs has its
 *    directories and inodes walked with the checks squashfuse lacks (walk.c);
 *  - OWD is set in every mode; --appimage-doctor reports what this host allows;
 *    --appimage-manifest prints the provenance manifest straight from the squashfs.
 *
 * Runtime failures print "<program>: <message>" on stderr and exit with 127.
 */
#define _GNU_SOURCE
#define FUSE_USE_VERSION 32
#include <dirent.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <fuse3/fuse_lowlevel.h>
#include <squashfuse/squashfuse.h>
#include <squashfuse/ll.h>
#include <squashfuse/file.h>

#include "runtime.h"
#include "cpu.h" /* AppRun's CPU check (apprun/cpu.c), shown by --appimage-doctor */

#define IDLE_MS_DEFAULT 500
/* join_mount's answer for a damaged image, which extraction would refuse as well. */
#define MOUNT_DAMAGED -2
/* Seconds the kernel may remember that a name is absent (a day: the image is immutable). */
#define NEGATIVE_TIMEOUT 86400.0
/* Written by `spack appimage` (manifest.py). */
#define MANIFEST ".appimage/manifest.json"
/* AppRun's entry table (apprun.py's TABLE), whose cpu lines the doctor shows. */
#define ENTRIES ".appimage/entries"

/* Sections that AppImage tools fill in place (sizes fixed by the format), and the
   image ID that `spack appimage` writes at assembly (assemble.stamp_image_id; open_image
   reads it). no_reorder keeps them in the file in this order (GCC otherwise emits them
   backwards): AppImageKit's validate skips .sha256_sig and .sig_key as one range and
   checks nothing when .sig_key does not follow .sha256_sig (signing.py fills them). */
#define SECTION(name) __attribute__((section(name), used, aligned(1), no_reorder))
char digest_md5[16] SECTION(".digest_md5") = {0};
char upd_info[1024] SECTION(".upd_info") = {0};
char sha256_sig[1024] SECTION(".sha256_sig") = {0};
char sig_key[8192] SECTION(".sig_key") = {0};
char image_id[128] SECTION(".spack_appimage_id") = {0};
/* What compiled this runtime: "spack-appimage <version> (commit <hex>[, dirty]), runtime
   source <digest>", written after linking (runtime.py's stamp_build) rather than with -D,
   so that the compile cache stays keyed by the sources alone; runtime.py reads it back to
   tell a stale pre-built runtime. */
char runtime_build[256] SECTION(".spack_appimage_build") = {0};
#define RUNTIME_VERSION (runtime_build[0] ? runtime_build : "spack-appimage (build not recorded)")

const char *prog = "appimage";
int verbose;

static void vmessage(const char *fmt, va_list ap) {
    fprintf(stderr, "%s: ", prog);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

/* A runtime failure: "<image>: <message>", exit 127. */
void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vmessage(fmt, ap);
    va_end(ap);
    exit(EXIT_RUNTIME);
}

/* What the runtime decides, with VERBOSE set. */
void say(const char *fmt, ...) {
    if (!verbose) return;
    va_list ap;
    va_start(ap, fmt);
    vmessage(fmt, ap);
    va_end(ap);
}

/* Formats a path into out; -1 (errno ENAMETOOLONG, out empty) when it does not fit:
   a truncated path would name another file. */
int path_printf(char *out, size_t cap, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, cap, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n < cap) return 0;
    out[0] = '\0';
    errno = ENAMETOOLONG;
    return -1;
}

/* ------------------------------------------------------------------ the image file */

struct image {
    char path[PATH_MAX];
    off_t offset;          /* where the squashfs starts */
    char id[128];          /* cache and mount key: what was built and what is there now */
    int fd;                /* the file that was identified, read by every later step: never
                              reopened by name, which someone may have swapped meanwhile */
    struct squashfs_crcs crcs; /* recorded at build time, checked before use (verify.c) */
};

static int read_at(int fd, void *buf, size_t size, off_t at) {
    return pread(fd, buf, size, at) == (ssize_t)size ? 0 : -1;
}

/* A section header of either ELF class. */
struct section {
    uint32_t name, type;
    uint64_t offset, size;
};

struct elf_layout {
    int class64;
    uint64_t shoff;
    uint16_t shentsize, shnum, shstrndx;
};

static int read_layout(int fd, struct elf_layout *elf) {
    unsigned char ident[EI_NIDENT];
    if (read_at(fd, ident, sizeof ident, 0) || memcmp(ident, ELFMAG, SELFMAG)) return -1;
    elf->class64 = ident[EI_CLASS] == ELFCLASS64;
    if (elf->class64) {
        Elf64_Ehdr eh;
        if (read_at(fd, &eh, sizeof eh, 0)) return -1;
        *elf = (struct elf_layout){1, eh.e_shoff, eh.e_shentsize, eh.e_shnum, eh.e_shstrndx};
    } else if (ident[EI_CLASS] == ELFCLASS32) {
        Elf32_Ehdr eh;
        if (read_at(fd, &eh, sizeof eh, 0)) return -1;
        *elf = (struct elf_layout){0, eh.e_shoff, eh.e_shentsize, eh.e_shnum, eh.e_shstrndx};
    } else {
        return -1;
    }
    return 0;
}

static int read_section_header(int fd, const struct elf_layout *elf, unsigned i,
                               struct section *out) {
    off_t at = (off_t)elf->shoff + (off_t)elf->shentsize * i;
    if (elf->class64) {
        Elf64_Shdr sh;
        if (elf->shentsize < sizeof sh || read_at(fd, &sh, sizeof sh, at)) return -1;
        *out = (struct section){sh.sh_name, sh.sh_type, sh.sh_offset, sh.sh_size};
    } else {
        Elf32_Shdr sh;
        if (elf->shentsize < sizeof sh || read_at(fd, &sh, sizeof sh, at)) return -1;
        *out = (struct section){sh.sh_name, sh.sh_type, sh.sh_offset, sh.sh_size};
    }
    return 0;
}

/* The ELF end as the official runtime computes it: the later of the section header
   table's end and the last section's end, where a SHT_NOBITS section (.bss) ends where
   it starts, holding no bytes of the file (assemble.elf_size: the same rule). */
static off_t elf_end(int fd) {
    struct elf_layout elf;
    struct section last;
    if (read_layout(fd, &elf)) return -1;
    off_t end = (off_t)elf.shoff + (off_t)elf.shentsize * elf.shnum;
    if (elf.shnum) {
        if (read_section_header(fd, &elf, elf.shnum - 1, &last)) return -1;
        if (last.type != SHT_NOBITS && (off_t)(last.offset + last.size) > end)
            end = last.offset + last.size;
    }
    return end;
}

/* Reads section `name` of the ELF file in `fd` into buf (NUL-terminated, truncated to
   cap - 1 bytes: the sections read are fixed-size text). */
static int read_section(int fd, const char *name, char *buf, size_t cap) {
    struct elf_layout elf;
    struct section strtab, sh;
    if (read_layout(fd, &elf) || elf.shstrndx >= elf.shnum ||
        read_section_header(fd, &elf, elf.shstrndx, &strtab))
        return -1;
    for (unsigned i = 0; i < elf.shnum; i++) {
        char sname[64] = {0};
        if (read_section_header(fd, &elf, i, &sh)) return -1;
        if (pread(fd, sname, sizeof sname - 1, strtab.offset + sh.name) <= 0) continue;
        if (strcmp(sname, name)) continue;
        size_t n = sh.size < cap - 1 ? sh.size : cap - 1;
        if (read_at(fd, buf, n, sh.offset)) return -1;
        buf[n] = '\0';
        return 0;
    }
    return -1;
}

static void open_image(struct image *img) {
    const char *target = getenv("TARGET_APPIMAGE");
    if (!realpath(target ? target : "/proc/self/exe", img->path))
        die("cannot resolve %s: %s", target ? target : "/proc/self/exe", strerror(errno));
    int fd = open(img->path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0 && fd <= 2) { /* the FUSE server replaces 0-2 with /dev/null; keeps this */
        int high = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        close(fd);
        fd = high;
    }
    if (fd < 0) die("cannot open %s: %s", img->path, strerror(errno));
    img->fd = fd;
    img->offset = elf_end(fd);
    struct stat st;
    char magic[4];
    if (img->offset <= 0 || fstat(fd, &st) || st.st_size < img->offset + 96 ||
        read_at(fd, magic, 4, img->offset) || memcmp(magic, "hsqs", 4))
        die("%s has no squashfs image after its runtime (truncated or not an AppImage)",
            img->path);
    /* "<id> <unpacked bytes> <metadata CRC> <squashfs CRC>" (assemble.stamp_image_id); an
       image built before the CRCs existed has the first two, and is walked instead
       (walk.c). The unpacked bytes are not used (extract.c measures the tree itself). */
    char idsec[128] = {0}, built[72], now[32]; /* built: "f" and 4 hex numbers at most */
    if (read_section(fd, ".spack_appimage_id", idsec, sizeof idsec) || !idsec[0] ||
        sscanf(idsec, "%64[0-9a-f] %*u %8[0-9a-f] %8[0-9a-f]", built, img->crcs.metadata,
               img->crcs.squashfs) < 1) {
        /* an image made by other tools: key the cache by the file's identity */
        snprintf(built, sizeof built, "f%lx-%lx-%lx-%lx", (unsigned long)st.st_dev,
                 (unsigned long)st.st_ino, (unsigned long)st.st_size, (unsigned long)st.st_mtime);
    }
    /* The ID section says what was built, not what the file holds now: an image repacked
       with its old runtime, or damaged, keeps it. The key also holds what identifies the
       squashfs itself (verify.c), so such a file never reuses another's extracted copy
       or joins another's mount: it gets its own, checked before use. */
    if (squashfs_identity(fd, img->offset, now, sizeof now))
        die("cannot read the squashfs of %s: %s", img->path, strerror(errno));
    snprintf(img->id, sizeof img->id, "%s-%s", built, now);
}

/* Opens the image's squashfs for squashfuse, once it is checked (verify.c: its metadata,
   or with `whole` all of it; without recorded CRCs, walk.c: its structure), from the
   descriptor open_image identified (sqfs_destroy leaves it open; squashfuse only preads
   it); 0, or -1 with the reason in `why` (errno EUCLEAN when the image is damaged:
   nothing can be done with it, whatever the directory). */
static int open_checked(const struct image *img, sqfs *fs, int whole, char *why, size_t cap) {
    char reason[128] = "its tables cannot be read";
    sqfs_err err = squashfs_check(img->fd, img->offset, &img->crcs, whole, reason,
                                  sizeof reason)
                       ? SQFS_BADFORMAT : sqfs_init(fs, img->fd, img->offset);
    if (err == SQFS_OK && !img->crcs.metadata[0] && squashfs_walk(fs, reason, sizeof reason)) {
        sqfs_destroy(fs);
        err = SQFS_BADFORMAT;
    }
    if (err == SQFS_OK) return 0;
    if (err == SQFS_BADCOMP) {
        snprintf(why, cap, "this runtime cannot decompress the squashfs of %s", img->path);
        errno = ENOTSUP;
    } else {
        snprintf(why, cap, "the squashfs of %s is damaged (%s); rebuild or re-download it",
                 img->path, reason);
        errno = EUCLEAN;
    }
    return -1;
}

static void print_section(const struct image *img, const char *name) {
    char buf[8193] = {0};
    if (read_section(img->fd, name, buf, sizeof buf)) die("cannot read section %s", name);
    printf("%s\n", buf);
}

/* ------------------------------------------------------------------- environment */

/* <image>.home or <image>.config as `variable`, when it is a directory of this user's
   that no other user can write or replace: one planted by another user next to an
   image in a shared directory would run their startup files (usercustomize.py, .bashrc)
   as this user. */
static void set_portable(const char *image, const char *suffix, const char *variable) {
    char path[PATH_MAX + 16], real[PATH_MAX], why[PATH_MAX + 64];
    struct stat st;
    if (path_printf(path, sizeof path, "%s.%s", image, suffix) || lstat(path, &st)) return;
    if (owned_directory(path, real, why, sizeof why)) {
        fprintf(stderr, "%s: not using %s as $%s: %s\n", prog, path, variable, why);
        return;
    }
    fprintf(stderr, "Setting $%s to %s\n", variable, real);
    setenv(variable, real, 1);
}

static void set_app_environment(const struct image *img, const char *appdir,
                                const char *argv0, const char *owd) {
    setenv("APPIMAGE", img->path, 1);
    setenv("APPDIR", appdir, 1);
    setenv("ARGV0", argv0, 1);
    setenv("OWD", owd, 1);
    set_portable(img->path, "home", "HOME");
    set_portable(img->path, "config", "XDG_CONFIG_HOME");
}

/* ---------------------------------------------------------------------- FUSE mode */

#ifdef SQFS_MULTITHREADED
#define LOCKED(call) call
#else
/* Debian's squashfuse 0.1.x keeps unsynchronized caches: the loop is multithreaded
   (requests are read and answered in parallel) but squashfuse itself runs one op at a
   time. A squashfuse built with multithreading (0.5+) runs them concurrently. */
static pthread_mutex_t sqfs_lock = PTHREAD_MUTEX_INITIALIZER;
#define LOCKED(call) do { pthread_mutex_lock(&sqfs_lock); call; pthread_mutex_unlock(&sqfs_lock); } while (0)
#endif

static void op_getattr(fuse_req_t r, fuse_ino_t i, struct fuse_file_info *f) { LOCKED(sqfs_ll_op_getattr(r, i, f)); }
/* Directories never change: the kernel may keep their entries from one listing to the
   next (interpreters list every directory of their search path at every start). */
static void op_opendir(fuse_req_t r, fuse_ino_t i, struct fuse_file_info *f) {
    f->cache_readdir = 1;
    f->keep_cache = 1;
    LOCKED(sqfs_ll_op_opendir(r, i, f));
}
static void op_releasedir(fuse_req_t r, fuse_ino_t i, struct fuse_file_info *f) { LOCKED(sqfs_ll_op_releasedir(r, i, f)); }
static void op_readdir(fuse_req_t r, fuse_ino_t i, size_t s, off_t o, struct fuse_file_info *f) { LOCKED(sqfs_ll_op_readdir(r, i, s, o, f)); }
/* A name that is not in the directory: the kernel may remember that (the image never
   changes), so the next lookup of it costs no round trip. Interpreters look up many names
   that do not exist (each module in each directory of their search path). squashfuse
   answers ENOENT, which the kernel does not cache; this answers an entry with inode 0,
   which it does. Any other outcome is squashfuse's own answer. */
static void lookup(fuse_req_t r, fuse_ino_t parent, const char *name) {
    sqfs_ll *ll = fuse_req_userdata(r);
    sqfs_inode dir;
    sqfs_name buffer;
    sqfs_dir_entry entry;
    bool found = true;
    sqfs_dentry_init(&entry, buffer);
    if (sqfs_ll_inode(ll, &dir, parent) == SQFS_OK && S_ISDIR(dir.base.mode) &&
        sqfs_dir_lookup(&ll->fs, &dir, name, strlen(name), &entry, &found) == SQFS_OK &&
        !found) {
        struct fuse_entry_param negative = {.ino = 0, .entry_timeout = NEGATIVE_TIMEOUT};
        fuse_reply_entry(r, &negative);
        return;
    }
    sqfs_ll_op_lookup(r, parent, name);
}

static void op_lookup(fuse_req_t r, fuse_ino_t p, const char *n) { LOCKED(lookup(r, p, n)); }
/* Whether the kernel opens and releases files without asking (FUSE_CAP_NO_OPEN_SUPPORT,
   Linux 4.19+): each open of a file is otherwise two round trips to this server (OPEN,
   RELEASE), and an interpreter opens hundreds of files at every start. */
static int kernel_opens;

static void op_init(void *userdata, struct fuse_conn_info *conn) {
    (void)userdata;
    kernel_opens = (conn->capable & FUSE_CAP_NO_OPEN_SUPPORT) != 0;
    /* Symlink targets too (Linux 4.20+): a program's loader goes through a SONAME link
       for every library, and without this each is a READLINK round trip. */
    if (conn->capable & FUSE_CAP_CACHE_SYMLINKS) conn->want |= FUSE_CAP_CACHE_SYMLINKS;
}

static void op_open(fuse_req_t r, fuse_ino_t i, struct fuse_file_info *f) {
    if (kernel_opens) {
        fuse_reply_err(r, ENOSYS); /* from now on the kernel does it; reads come with fh 0 */
        return;
    }
    LOCKED(sqfs_ll_op_open(r, i, f));
}

/* A read of a file opened by the kernel (fh 0): the inode is looked up by number, as
   squashfuse does at open; otherwise squashfuse's read with the inode of its open. */
static void read_file(fuse_req_t r, fuse_ino_t ino, size_t size, off_t off,
                      struct fuse_file_info *f) {
    if (f->fh) {
        sqfs_ll_op_read(r, ino, size, off, f);
        return;
    }
    sqfs_ll *ll = fuse_req_userdata(r);
    sqfs_inode inode;
    char *buf = malloc(size ? size : 1);
    sqfs_off_t got = size;
    if (!buf) {
        fuse_reply_err(r, ENOMEM);
    } else if (sqfs_ll_inode(ll, &inode, ino) != SQFS_OK || !S_ISREG(inode.base.mode)) {
        fuse_reply_err(r, EIO);
    } else if (sqfs_read_range(&ll->fs, &inode, off, &got, buf) != SQFS_OK) {
        fuse_reply_err(r, EIO);
    } else {
        fuse_reply_buf(r, buf, got);
    }
    free(buf);
}
static void op_release(fuse_req_t r, fuse_ino_t i, struct fuse_file_info *f) { LOCKED(sqfs_ll_op_release(r, i, f)); }
static void op_read(fuse_req_t r, fuse_ino_t i, size_t s, off_t o, struct fuse_file_info *f) { LOCKED(read_file(r, i, s, o, f)); }
static void op_readlink(fuse_req_t r, fuse_ino_t i) { LOCKED(sqfs_ll_op_readlink(r, i)); }
static void op_listxattr(fuse_req_t r, fuse_ino_t i, size_t s) { LOCKED(sqfs_ll_op_listxattr(r, i, s)); }
static void op_getxattr(fuse_req_t r, fuse_ino_t i, const char *n, size_t s) { LOCKED(sqfs_ll_op_getxattr(r, i, n, s)); }
static void op_forget(fuse_req_t r, fuse_ino_t i, uint64_t n) { LOCKED(sqfs_ll_op_forget(r, i, n)); }
static void op_statfs(fuse_req_t r, fuse_ino_t i) { LOCKED(stfs_ll_op_statfs(r, i)); }

static const struct fuse_lowlevel_ops ops = {
    .init = op_init, .getattr = op_getattr, .opendir = op_opendir, .releasedir = op_releasedir,
    .readdir = op_readdir, .lookup = op_lookup, .open = op_open, .release = op_release,
    .read = op_read, .readlink = op_readlink, .listxattr = op_listxattr,
    .getxattr = op_getxattr, .forget = op_forget, .statfs = op_statfs,
};

struct server {
    struct fuse_session *se;
    const char *dir, *mnt;
    long idle_ms;          /* 0 once stopped */
    int lock, users;       /* the mount's lock files */
    pthread_mutex_t mutex; /* guards what follows and idle_ms; held by the watcher while
                              it holds a lock, by the main thread once the loop returned */
    pthread_cond_t wake;   /* stop() cuts the watcher's wait short (CLOCK_MONOTONIC) */
    int loop_done;         /* the FUSE loop has returned */
    int unmounted;         /* the watcher unmounted and removed the mount's directory */
    int stopped;           /* TERM, INT or HUP came (stop) */
};

/* After an unmount found the mount busy (a process inside it without the users lock),
   the watcher tries again after this long at the least, whatever the idle time. */
#define BUSY_RETRY_MS 1000

/* Waits `ms`, with the server's mutex held (it is let go meanwhile), or less if stop()
   comes (s->stopped is no longer `stopped`, what the caller saw when it chose `ms`). */
static void nap(struct server *s, long ms, int stopped) {
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    long long ns = until.tv_nsec + ms % 1000 * 1000000LL;
    until.tv_sec += ms / 1000 + ns / 1000000000;
    until.tv_nsec = ns % 1000000000;
    while (s->stopped == stopped && pthread_cond_timedwait(&s->wake, &s->mutex, &until) != ETIMEDOUT)
        continue;
}

/* Unmounts once no app has held the users lock for idle_ms, without polling: it sleeps
   in a blocking flock until the last app has left (the kernel wakes it), then once for
   idle_ms, then checks. Holding the lock alone, it sets the users file's mtime to 0;
   launchers touch the file as they arrive (join_mount), so an app that came and went
   during that sleep shows as a non-zero mtime whatever the clock's granularity, and the
   wait starts over. The mount lock is taken first, so no launcher is between "is it
   mounted?" and taking its users lock. After stop(), the idle time is 0. */
static void *watch_users(void *arg) {
    struct server *s = arg;
    static const struct timespec epoch[2] = {{0, 0}, {0, 0}};
    pthread_mutex_lock(&s->mutex);
    long pause = s->idle_ms;
    int stopped = s->stopped;
    pthread_mutex_unlock(&s->mutex);
    for (;;) {
        if (flock(s->users, LOCK_EX)) {
            if (errno == EINTR) continue;
            return NULL; /* cannot watch: the mount stays until the kernel ends it */
        }
        int stamped = !futimens(s->users, epoch);
        (void)flock(s->users, LOCK_UN); /* launchers must not wait on this lock */
        pthread_mutex_lock(&s->mutex);
        nap(s, pause, stopped);
        pause = s->idle_ms;
        stopped = s->stopped;
        struct stat now;
        int idle = !s->loop_done && stamped && !flock(s->lock, LOCK_EX | LOCK_NB);
        if (idle && flock(s->users, LOCK_EX | LOCK_NB)) {
            idle = 0; /* an app is running */
        } else if (idle && (fstat(s->users, &now) || now.st_mtim.tv_sec || now.st_mtim.tv_nsec)) {
            idle = 0; /* an app came and went while we slept: wait idle_ms again */
        }
        /* Not lazy: a process still inside the mount without the users lock (a daemon
           that closed its fds) makes it busy, and the server keeps serving. */
        if (idle && unmount_now(s->mnt) != 0) {
            pause = pause > BUSY_RETRY_MS ? pause : BUSY_RETRY_MS;
        } else if (idle) {
            fuse_session_exit(s->se); /* the loop's threads get ENODEV and return */
            /* Nothing stays: a launcher waiting on a lock finds it unlinked once it
               gets it, and starts over (join_mount). */
            remove_mount_dir(s->dir);
            s->unmounted = 1;
        }
        /* Unlocking cannot fail on a descriptor we hold; closing on exit would do it. */
        (void)flock(s->users, LOCK_UN);
        (void)flock(s->lock, LOCK_UN);
        int done = s->unmounted || s->loop_done;
        pthread_mutex_unlock(&s->mutex);
        if (done) return NULL;
    }
}

/* TERM, INT or HUP (stop_on_signals): the server leaves as soon as no app uses the
   mount, as with an idle time of 0. The watcher is woken from its wait and unmounts,
   not lazily, once the last app has let go of "users"; until then the mount stays
   whole, so the apps inside still find files by path (a TERM handler that imports a
   module or saves a checkpoint next to its data) and launches that arrive join it: a
   lazy detach would give them all ENOENT. */
static void stop(void *arg) {
    struct server *s = arg;
    pthread_mutex_lock(&s->mutex);
    s->idle_ms = 0;
    s->stopped = 1;
    pthread_cond_signal(&s->wake);
    pthread_mutex_unlock(&s->mutex);
}

/* What the server tells its launcher on the `ready` pipe: "R", or why it cannot serve. */
enum { READY = 'R', REFUSED = 'E', DAMAGED = 'D' /* extraction cannot help either */ };

/* Tells the launcher why the server cannot serve, "<kind><message>", and exits. */
static void refuse(int ready, char kind, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 3, 4)));
static void refuse(int ready, char kind, const char *fmt, ...) {
    char msg[PATH_MAX + 64] = {kind};
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg + 1, sizeof msg - 1, fmt, ap);
    va_end(ap);
    (void)!write(ready, msg, strlen(msg));
    _exit(1);
}

/* The server process: mounts, reports on `ready` (READY, or refuse), serves. */
static void serve(const struct image *img, const char *dir, const char *mnt, int ready) {
    struct server s = {.dir = dir, .mnt = mnt, .idle_ms = IDLE_MS_DEFAULT,
                       .lock = open_lock(dir, "lock"), .users = open_lock(dir, "users"),
                       .mutex = PTHREAD_MUTEX_INITIALIZER};
    /* Timed on the monotonic clock, which no change of the date moves (not
       pthread_cond_clockwait: glibc 2.30+, and RHEL 8 builds with 2.28). */
    pthread_condattr_t monotonic;
    if (pthread_condattr_init(&monotonic) ||
        pthread_condattr_setclock(&monotonic, CLOCK_MONOTONIC) ||
        pthread_cond_init(&s.wake, &monotonic))
        refuse(ready, REFUSED, "cannot make the server's condition variable");
    const char *idle = getenv("APPIMAGE_IDLE_MS");
    char *end;
    long value = idle ? strtol(idle, &end, 10) : -1;
    if (idle && *idle && !*end && value >= 0) s.idle_ms = value; /* else the default */
    if (s.lock < 0 || s.users < 0) refuse(ready, REFUSED, "cannot open the locks in %s", dir);
    /* A launcher killed before it reads "R" must not kill the server with SIGPIPE. */
    signal(SIGPIPE, SIG_IGN);
    /* Its metadata checked here, once per mount, on the descriptor it serves from: not
       its data, which would mean reading the whole image at each mount (verify.c). */
    char why[PATH_MAX + 128];
    sqfs_ll *ll = calloc(1, sizeof *ll);
    if (!ll) refuse(ready, REFUSED, "out of memory");
    if (open_checked(img, &ll->fs, 0, why, sizeof why))
        refuse(ready, errno == EUCLEAN ? DAMAGED : REFUSED, "%s", why);
    if (sqfs_ll_init(ll)) refuse(ready, REFUSED, "cannot serve the squashfs of %s", img->path);
    char found[PATH_MAX], fsname[PATH_MAX + 8];
    /* root without fusermount3 mounts with mount(2); auto_unmount needs fusermount3 */
    int auto_unmount = !(getuid() == 0 && find_fusermount(found, sizeof found) &&
                         access("/usr/bin/fusermount3", X_OK));
    /* libfuse and fusermount3 split options at commas: the image path is escaped, or a
       directory named "a,allow_other" would add that option. */
    char *options = NULL;
    if (path_printf(fsname, sizeof fsname, "fsname=%s", img->path) ||
        fuse_opt_add_opt(&options, "ro,nodev,nosuid,subtype=spack-appimage") ||
        (auto_unmount && fuse_opt_add_opt(&options, "auto_unmount")) ||
        fuse_opt_add_opt_escaped(&options, fsname))
        refuse(ready, REFUSED, "cannot make the mount options for %s", img->path);
    char *argv[] = {(char *)prog, "-o", options, NULL};
    struct fuse_args args = FUSE_ARGS_INIT(3, argv);
    s.se = fuse_session_new(&args, &ops, sizeof ops, ll);
    if (!s.se || fuse_session_mount(s.se, mnt)) refuse(ready, REFUSED, "the FUSE mount of %s failed", mnt);
    /* Before any other thread: they inherit the signals blocked. */
    pthread_t watcher;
    int error = stop_on_signals(stop, &s);
    if (!error) error = pthread_create(&watcher, NULL, watch_users, &s);
    if (error) {
        fuse_session_unmount(s.se);
        refuse(ready, REFUSED, "cannot start the server's threads: %s", strerror(error));
    }
    (void)!write(ready, (char[]){READY}, 1);
    close(ready);
    struct fuse_loop_config config = {.clone_fd = 0, .max_idle_threads = 10};
    fuse_session_loop_mt(s.se, &config);
    /* The loop ends when the watcher unmounted, or when the kernel ended the connection
       (someone else unmounted it): then the directory goes once nobody uses it (the
       last app's lock may be let go just after its last reference to the mount). */
    pthread_mutex_lock(&s.mutex);
    s.loop_done = 1;
    int removed = s.unmounted;
    pthread_mutex_unlock(&s.mutex);
    if (!removed) remove_when_unused(dir, mnt);
    _exit(0);
}

/* Why FUSE cannot be used here, or NULL. */
static const char *fuse_unusable(void) {
    if (access("/dev/fuse", R_OK | W_OK)) return "/dev/fuse is missing or not accessible";
    char fusermount[PATH_MAX];
    if (getuid() != 0 && find_fusermount(fusermount, sizeof fusermount))
        return "no setuid fusermount3 in PATH";
    return NULL;
}

/* Closes every descriptor from `low` up but the two in `keep` (ascending): with
   close_range where the kernel has it (Linux 5.9+), else each one /proc/self/fd lists
   (RHEL 8's 4.18 kernel), else every number below the descriptor limit. */
static void close_descriptors(int low, const int keep[2]) {
    int from = low, failed = 0;
    for (int i = 0; i < 2; i++) {
        if (keep[i] > from) failed |= close_range(from, keep[i] - 1, 0);
        if (keep[i] >= from) from = keep[i] + 1;
    }
    if (!failed && !close_range(from, ~0U, 0)) return;
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            int fd = atoi(e->d_name);
            if (e->d_name[0] != '.' && fd >= low && fd != keep[0] && fd != keep[1] &&
                fd != dirfd(d))
                close(fd);
        }
        closedir(d);
        return;
    }
    /* Capped: a container's limit can be 2^30, a billion close() calls. */
    struct rlimit limit;
    long max = getrlimit(RLIMIT_NOFILE, &limit) || limit.rlim_cur > 65536
                   ? 65536 : (long)limit.rlim_cur;
    for (int fd = low; fd < max; fd++)
        if (fd != keep[0] && fd != keep[1]) close(fd);
}

/* Starts the server in its own session, detached from this process, under its guardian
   (unmount.c: guard), and waits until it has mounted. Returns 0, or -1 with the reason
   in `why`. */
static int start_server(const struct image *img, const char *dir, const char *mnt,
                        char *why, size_t cap) {
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC)) return snprintf(why, cap, "pipe: %s", strerror(errno)), -1;
    pid_t first = fork();
    if (first < 0) {
        close(pipefd[0]), close(pipefd[1]);
        return snprintf(why, cap, "fork: %s", strerror(errno)), -1;
    }
    if (first == 0) {
        /* Nothing of the caller's stays open in the server: not the launcher's locks,
           not a job's lock or a pipe someone waits on for end-of-file. */
        /* Above 0-2, which /dev/null replaces below (a caller may have closed them). */
        int ready = pipefd[1] > 2 ? pipefd[1] : fcntl(pipefd[1], F_DUPFD_CLOEXEC, 3);
        if (ready < 0) _exit(1);
        /* The server reads the image from the descriptor it was checked on. */
        int keep[2] = {ready < img->fd ? ready : img->fd, ready < img->fd ? img->fd : ready};
        close_descriptors(3, keep);
        /* A failure here ends the server before "R": the launcher reports it died. */
        if (setsid() < 0) _exit(1);
        /* The guardian and its server: not the session leader (which could get a
           terminal), and not this process's children (the app would inherit them). */
        pid_t guardian = fork();
        if (guardian) _exit(guardian < 0);
        int null = open("/dev/null", O_RDWR);
        if (chdir("/") || null < 0 || dup2(null, 0) < 0 || dup2(null, 1) < 0 ||
            dup2(null, 2) < 0)
            _exit(1);
        if (null > 2) close(null);
        if (guard(dir, mnt, ready, img->fd)) _exit(1);
        serve(img, dir, mnt, ready); /* in the guardian's child */
    }
    close(pipefd[1]);
    waitpid(first, NULL, 0);
    char reply[PATH_MAX + 64] = {0};
    ssize_t n = read(pipefd[0], reply, sizeof reply - 1);
    close(pipefd[0]);
    if (n > 0 && reply[0] == READY) return 0;
    snprintf(why, cap, "%s", n > 1 ? reply + 1 : "the FUSE server died");
    return n > 0 && reply[0] == DAMAGED ? MOUNT_DAMAGED : -1;
}

/* The mount's directory <private dir>/<id>-<mount namespace> open in *dirfd, and its
   lock files, "users" held shared and "lock" exclusive, both still the directory's
   (a server that unmounted removes them). 0, or -1 with the reason in `why`. */
static int lock_mount_dir(const struct image *img, int *dirfd, int *users, int *lock,
                          char *mnt, size_t cap, char *why, size_t wcap) {
    struct privdir base;
    char name[128], dir[PATH_MAX];
    /* One mount per mount namespace: launches in other namespaces (containers,
       unshare -m, job sandboxes) that share this directory cannot see the mount. */
    struct stat ns;
    if (stat("/proc/self/ns/mnt", &ns)) ns.st_ino = 0;
    if (path_printf(name, sizeof name, "%s-%llu", img->id, (unsigned long long)ns.st_ino))
        return snprintf(why, wcap, "the image ID is too long"), -1;
    if (pick_base(strlen(name) + sizeof "/mnt", &base))
        return snprintf(why, wcap, "no usable directory for the mount point"), -1;
    int rc = -1;
    if (path_printf(dir, sizeof dir, "%s/%s", base.path, name) ||
        path_printf(mnt, cap, "%s/mnt", dir)) {
        snprintf(why, wcap, "the mount point's path in %s is too long", base.path);
        privdir_close(&base, 1);
        return -1;
    }
    for (int attempt = 0; rc && attempt < 100; attempt++) {
        *users = *lock = -1;
        *dirfd = private_subdir(base.fd, name, NULL);
        if (*dirfd < 0) {
            snprintf(why, wcap, "cannot make %s: %s", dir, strerror(errno));
            break;
        }
        /* Only a server that removed the directory, or its locks, while we opened or
           waited is worth another try; other errors (EACCES, ENOSPC, EDQUOT) stay. */
        int again = 0;
        if ((*users = open_lock_at(*dirfd, "users")) < 0 || (*lock = open_lock_at(*dirfd, "lock")) < 0) {
            again = errno == ENOENT; /* the directory was removed */
            snprintf(why, wcap, "cannot create locks in %s: %s", dir, strerror(errno));
        } else if (flock(*users, LOCK_SH) || flock(*lock, LOCK_EX)) {
            snprintf(why, wcap, "cannot lock %s: %s", dir, strerror(errno));
        } else if (still_linked_at(base.fd, name, *dirfd) &&
                   still_linked_at(*dirfd, "users", *users) &&
                   still_linked_at(*dirfd, "lock", *lock)) {
            rc = 0;
            break;
        } else {
            again = 1;
            snprintf(why, wcap, "%s keeps being removed", dir);
        }
        if (*users >= 0) close(*users);
        if (*lock >= 0) close(*lock);
        close(*dirfd);
        if (!again) break;
    }
    privdir_close(&base, 0);
    return rc;
}

/* Mounts (or joins the mount of) the image; returns the users-lock fd the app must
   keep open, or -1 with the reason in `why` (MOUNT_DAMAGED: the image is damaged). */
static int join_mount(const struct image *img, char *mnt, size_t cap, char *why, size_t wcap) {
    int dirfd, users, lock;
    char dir[PATH_MAX];
    if (lock_mount_dir(img, &dirfd, &users, &lock, mnt, cap, why, wcap)) return -1;
    snprintf(dir, sizeof dir, "%.*s", (int)(strrchr(mnt, '/') - mnt), mnt);
    int rc = 0;
    if (futimens(users, NULL)) { /* an arrival, for the server's idle timer (watch_users) */
        snprintf(why, wcap, "cannot mark %s/users: %s", dir, strerror(errno));
        rc = -1;
    } else if (!is_mounted(mnt)) {
        clear_dead_mount(mnt); /* its server and guardian were both killed (a job's end) */
        if (mkdirat(dirfd, "mnt", 0700) && errno != EEXIST) {
            snprintf(why, wcap, "mkdir %s: %s", mnt, strerror(errno));
            rc = -1;
        } else {
            say("mounting %s at %s", img->path, mnt);
            rc = start_server(img, dir, mnt, why, wcap);
        }
    } else {
        say("joining the mount at %s", mnt);
    }
    if (rc) abandon_mount(dir, mnt, users); /* a failed mount leaves nothing */
    close(lock); /* releases the mount lock */
    close(dirfd);
    if (rc) {
        close(users);
        return rc == MOUNT_DAMAGED ? rc : -1;
    }
    if (fcntl(users, F_SETFD, 0)) { /* inherited by the app: its shared lock keeps the mount */
        close(users);
        return snprintf(why, wcap, "fcntl: %s", strerror(errno)), -1;
    }
    return users;
}

/* ---------------------------------------------------------------- extraction */

/* Opens the image's squashfs for reading (extraction, --appimage-extract,
   --appimage-manifest), all of it checked first (open_checked: what is extracted is then
   what was built, and damage is found before anything is written); says why not on
   stderr, in one line. */
static int open_squashfs(const struct image *img, sqfs *fs) {
    char why[PATH_MAX + 128];
    if (!open_checked(img, fs, 1, why, sizeof why)) return 0;
    int error = errno;
    fprintf(stderr, "%s: %s\n", prog, why);
    errno = error;
    return -1;
}

static void close_squashfs(sqfs *fs) {
    sqfs_destroy(fs); /* leaves the image's descriptor open: struct image keeps it */
}

/* The image extracted into the cache in the first candidate that takes it (one that
   fails is cleaned, and the next is tried); dies with every candidate's reason when
   none does. The copy is marked used by this process (ex->users). */
static void join_extraction(const struct image *img, struct extraction *ex) {
    const char *list[6];
    char why[PATH_MAX + 256], reasons[8 * sizeof why] = "";
    sqfs fs;
    int n = candidates(list), opened = 0, state = -1;
    for (int i = 0; i < n && state != CACHE_READY; i++) {
        /* A failed cache_join leaves nothing; after it, cache_abandon cleans. */
        state = cache_join(list[i], img->id, ex, why, sizeof why);
        int joined = state >= 0;
        if (state == CACHE_EMPTY) {
            if (!opened && open_squashfs(img, &fs)) {
                cache_abandon(ex); /* nothing of the refused image stays */
                exit(EXIT_RUNTIME); /* open_squashfs said why */
            }
            opened = 1;
            state = cache_fill(ex, &fs, img->path, why, sizeof why);
        }
        if (state == CACHE_READY && cache_use(ex, why, sizeof why)) state = -1;
        if (state == CACHE_READY) break;
        if (joined) cache_abandon(ex);
        say("skipping %s: %s", list[i], why);
        size_t used = strlen(reasons);
        snprintf(reasons + used, sizeof reasons - used, "%s%s: %s", used ? "; " : "", list[i], why);
    }
    if (opened) close_squashfs(&fs);
    if (state != CACHE_READY)
        die("no directory allows extraction (%s): set TMPDIR to a node-local directory of "
            "yours with room for the image", reasons);
}

static volatile pid_t child;

/* Passes a signal sent to the runtime on to the app. One from the terminal (SI_KERNEL)
   already reached the app, which is in the same process group. */
static void forward(int sig, siginfo_t *info, void *context) {
    (void)context;
    if (child > 0 && info->si_code != SI_KERNEL) kill(child, sig);
}

/* Runs the copy's AppRun through the copy's descriptor: no name is looked up again. A
   #! script cannot run so (the kernel hands its interpreter /dev/fd/N/AppRun, and N is
   closed by then: ENOENT); it runs by its path, which no other user can change
   (privdir.c). */
static void exec_apprun(const struct extraction *ex, char **argv) {
    char apprun[PATH_MAX + 8];
    execveat(ex->root, "AppRun", argv, environ, 0);
    int error = errno;
    if (error == ENOENT && !faccessat(ex->root, "AppRun", X_OK, 0) &&
        !path_printf(apprun, sizeof apprun, "%s/AppRun", ex->root_path)) {
        execv(apprun, argv);
        error = errno;
    }
    fprintf(stderr, "%s: cannot run %s/AppRun: %s\n", prog, ex->root_path, strerror(error));
}

static int run_extracted(const struct image *img, char **argv, const char *owd) {
    struct extraction ex;
    join_extraction(img, &ex);
    set_app_environment(img, ex.root_path, argv[0], owd);
    int sigs[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGCONT};
    struct sigaction sa = {.sa_sigaction = forward, .sa_flags = SA_SIGINFO | SA_RESTART};
    sigset_t forwarded, previous;
    sigemptyset(&sa.sa_mask);
    sigemptyset(&forwarded);
    for (size_t i = 0; i < sizeof sigs / sizeof *sigs; i++) {
        sigaction(sigs[i], &sa, NULL);
        sigaddset(&forwarded, sigs[i]);
    }
    signal(SIGCHLD, SIG_DFL); /* an inherited SIG_IGN would make waitpid lose the status */
    /* Blocked across fork: a signal delivered on fork's return, before `child` is
       stored, would otherwise be dropped while the app already runs. */
    sigprocmask(SIG_BLOCK, &forwarded, &previous);
    pid_t pid = fork();
    if (pid < 0) die("fork: %s", strerror(errno));
    if (pid == 0) {
        struct sigaction dfl = {.sa_handler = SIG_DFL};
        for (size_t i = 0; i < sizeof sigs / sizeof *sigs; i++) sigaction(sigs[i], &dfl, NULL);
        sigprocmask(SIG_SETMASK, &previous, NULL);
        /* the app and its children keep the tree in use */
        if (fcntl(ex.users, F_SETFD, 0)) _exit(EXIT_RUNTIME);
        exec_apprun(&ex, argv);
        _exit(EXIT_RUNTIME);
    }
    child = pid;
    sigprocmask(SIG_SETMASK, &previous, NULL);
    int status;
    while (waitpid(child, &status, 0) < 0)
        if (errno != EINTR) die("waitpid: %s", strerror(errno));
    child = 0;
    cache_leave(&ex);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return WEXITSTATUS(status);
}

/* The regular file `path` of the squashfs, into `inode`: 0, or -1 if there is none. */
static int find_regular(sqfs *fs, const char *path, sqfs_inode *inode) {
    bool found = false;
    return sqfs_inode_get(fs, inode, sqfs_inode_root(fs)) ||
           sqfs_lookup_path(fs, inode, path, &found) || !found || !S_ISREG(inode->base.mode)
           ? -1 : 0;
}

/* Copies the regular file at `path` inside the squashfs to stdout, without a mount:
   how --appimage-manifest shows the provenance manifest. */
static int print_file(const struct image *img, const char *path) {
    sqfs fs;
    if (open_squashfs(img, &fs)) return 1;
    sqfs_inode inode;
    int rc = 0;
    if (find_regular(&fs, path, &inode)) {
        fprintf(stderr, "%s: no %s in the image (not built by spack appimage?)\n", prog, path);
        rc = 1;
    } else if (fflush(stdout) || copy_file(&fs, &inode, STDOUT_FILENO)) {
        fprintf(stderr, "%s: cannot copy %s out of the image: %s\n", prog, path,
                strerror(errno));
        rc = 1;
    }
    close_squashfs(&fs);
    return rc;
}

/* ------------------------------------------------------------------- the flags */

static void help(void) {
    fprintf(stderr,
        "AppImage runtime (%s)\n\n"
        "  --appimage-help                  this text\n"
        "  --appimage-version               the runtime's version\n"
        "  --appimage-offset                where the squashfs starts, in bytes\n"
        "  --appimage-extract [PATTERN]     extract (paths matching PATTERN) to ./squashfs-root\n"
        "  --appimage-extract-and-run ...   run from an extracted copy instead of a FUSE mount\n"
        "  --appimage-mount                 mount, print the mount point, wait until killed\n"
        "  --appimage-updateinformation     print the update information (also --appimage-updateinfo)\n"
        "  --appimage-signature             print the embedded signature\n"
        "  --appimage-portable-home         create <image>.home, used as $HOME from then on\n"
        "  --appimage-portable-config       create <image>.config, used as $XDG_CONFIG_HOME\n"
        "  --appimage-doctor                report what this host allows (FUSE, directories, CPU)\n"
        "  --appimage-manifest              print the provenance manifest (JSON) of the image\n\n"
        "Environment: APPIMAGE_EXTRACT_AND_RUN (extract instead of mounting), NO_CLEANUP\n"
        "(keep the extracted copy), TMPDIR (first place to mount or extract), TARGET_APPIMAGE\n"
        "(operate on that file), VERBOSE, APPIMAGE_QUIET (no line when falling back to\n"
        "extraction, nor after --appimage-extract), APPIMAGE_IDLE_MS (how long a shared\n"
        "mount outlives its last user).\n"
        "Failures exit with 127; in extract mode an app killed by signal N exits with 128+N.\n",
        RUNTIME_VERSION);
}

/* The regular file `path` of the squashfs as NUL-terminated text (malloc'd), or NULL. */
static char *read_text(sqfs *fs, const char *path) {
    sqfs_inode inode;
    if (find_regular(fs, path, &inode)) return NULL;
    sqfs_off_t size = inode.xtra.reg.file_size;
    char *text = malloc(size + 1);
    if (text && sqfs_read_range(fs, &inode, 0, &size, text)) size = -1;
    if (!text || size < 0) return free(text), NULL;
    text[size] = '\0';
    return text;
}

/* The doctor's CPU lines: this host's CPU, with the highest of the image's generic
   levels it has, and each build of the image that needs more than the family's base,
   with the flags this CPU lacks (cpu.c: what AppRun refuses on). `fs` is NULL when the
   image cannot be read. */
static void doctor_cpu(sqfs *fs) {
    struct cpu_table table = {0};
    struct cpu_host host;
    char *text = fs ? read_text(fs, ENTRIES) : NULL, *save = NULL, *f[4];
    for (char *line = text ? strtok_r(text, "\n", &save) : NULL; line;
         line = strtok_r(NULL, "\n", &save))
        cpu_table_add(&table, f, table_fields(line, f, 4));
    int known = cpu_host_read(&host) == 0;
    const char *level = known ? cpu_level_of(&table, &host) : NULL;
    if (!known)
        printf("cpu: unknown (/proc/cpuinfo is unreadable or lists no flags)\n");
    else
        printf("cpu: %s%s%s%s\n", host.model ? host.model : "model not named by the kernel",
               table.n_levels ? " (highest generic level: " : "",
               table.n_levels ? (level ? level : cpu_family()) : "", table.n_levels ? ")" : "");
    if (text && !table.n_needs) printf("image needs: any %s CPU\n", cpu_family());
    for (int i = 0; i < table.n_needs; i++) {
        const struct cpu_need *need = &table.needs[i];
        char lacks[8192], *specs = cpu_specs(need->specs);
        int missing = known ? cpu_missing(&host, need->flags, INT_MAX, lacks, sizeof lacks) : 0;
        printf("image needs: %s CPU (for %s): %s%s%s\n", need->target,
               specs ? specs : need->specs,
               !known ? "not checked (this CPU's flags are unknown)"
                      : missing ? "this CPU lacks " : "this CPU has it",
               missing ? lacks : "",
               missing ? " (the image refuses to start here; APPIMAGE_IGNORE_CPU=1 runs it "
                         "anyway)" : "");
        free(specs);
    }
    if (known) cpu_host_free(&host);
    free(table.needs);
    free(table.levels);
    free(text);
}

static int doctor(const struct image *img) {
    printf("image: %s\nsquashfs offset: %lld\nimage id: %s\n", img->path,
           (long long)img->offset, img->id);
    printf("/dev/fuse: %s\n", access("/dev/fuse", R_OK | W_OK) ? "NOT usable" : "usable");
    char fusermount[PATH_MAX];
    int found = find_fusermount(fusermount, sizeof fusermount) == 0;
    printf("fusermount: %s%s\n", found ? fusermount : "none (setuid-root fusermount3 in PATH)",
           getuid() == 0 ? " (root: not needed)" : "");
    const char *why = fuse_unusable();
    if (why) printf("mode: extract (%s)\n", why); else printf("mode: FUSE mount\n");
    FILE *f = fopen("/proc/sys/user/max_user_namespaces", "r");
    long userns = -1;
    if (f) { if (fscanf(f, "%ld", &userns) != 1) userns = -1; fclose(f); }
    printf("user namespaces: %s\n", userns > 0 ? "allowed" : "not allowed");
    const char *list[6];
    int n = candidates(list);
    for (int i = 0; i < n; i++) {
        struct statvfs sv;
        char reason[PATH_MAX + 128];
        if (statvfs(list[i], &sv)) { printf("directory %s: missing\n", list[i]); continue; }
        int unsafe = candidate_safe(list[i], reason, sizeof reason);
        printf("directory %s: exec %s, %llu MiB free, writable %s, %s%s\n", list[i],
               (sv.f_flag & ST_NOEXEC) ? "NOT allowed" : "allowed",
               (unsigned long long)sv.f_bavail * sv.f_frsize >> 20,
               access(list[i], W_OK) || (sv.f_flag & ST_RDONLY) ? "no" : "yes",
               unsafe ? "NOT safe: " : "safe from other users", unsafe ? reason : "");
    }
    /* Counted as extraction counts it: each file rounded up to 4 KiB blocks. */
    sqfs fs;
    struct needs needs;
    if (!open_squashfs(img, &fs)) {
        if (!extraction_needs(&fs, 4096, &needs))
            printf("extraction needs: %.1f MiB (4 KiB blocks), %llu inodes\n",
                   needs.blocks * 4096.0 / (1 << 20), needs.inodes);
        doctor_cpu(&fs);
        close_squashfs(&fs);
    } else {
        doctor_cpu(NULL);
    }
    return 0;
}

/* --appimage-portable-home/-config: <image>.home or .config, private to this user
   (set_portable uses nothing else). */
static int portable(const struct image *img, const char *suffix) {
    char path[PATH_MAX + 16], real[PATH_MAX], why[PATH_MAX + 64];
    if (path_printf(path, sizeof path, "%s.%s", img->path, suffix) ||
        (mkdir(path, 0700) && errno != EEXIST))
        fprintf(stderr, "Error creating portable %s directory %s: %s\n", suffix, path, strerror(errno));
    else if (owned_directory(path, real, why, sizeof why))
        fprintf(stderr, "Error: %s exists and cannot be used: %s\n", path, why);
    else
        fprintf(stderr, "Portable %s directory created at %s\n", suffix, path);
    return 0;
}

/* --appimage-extract: into ./squashfs-root, made if missing (and removed again if this
   run made it and then failed: nothing half-written stays). It says what it wrote in one
   line on stderr, as unsquashfs does (APPIMAGE_QUIET drops it), and a PATTERN that
   matches nothing is an error: the official runtime is silent and exits 0 then, so a
   pattern that could never match (a leading "/", AppImageKit#363) went unnoticed. */
static int extract_here(const struct image *img, const char *pattern) {
    char why[PATH_MAX + 256], cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd)) snprintf(cwd, sizeof cwd, ".");
    int made = mkdir("squashfs-root", 0755) == 0;
    int root = made || errno == EEXIST
        ? open("squashfs-root", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) : -1;
    if (root < 0) {
        fprintf(stderr, "%s: cannot create squashfs-root in %s: %s (run it in a directory you "
                "can write)\n", prog, cwd, strerror(errno));
        return 1;
    }
    sqfs fs;
    struct extracted count;
    int rc = open_squashfs(img, &fs) ? -2
             : extract_tree(&fs, root, "squashfs-root", pattern, &count, why, sizeof why);
    if (rc != -2) close_squashfs(&fs);
    if (rc == 0 && pattern && !(count.files + count.dirs + count.links)) {
        snprintf(why, sizeof why, "no path in the image matches '%s' (patterns match paths "
                 "as the image holds them, without a leading /: 'usr/bin/*')", pattern);
        rc = -1;
    }
    if (rc == -1) fprintf(stderr, "%s: %s\n", prog, why);
    if (rc == 0 && !getenv("APPIMAGE_QUIET"))
        fprintf(stderr, "%s: extracted %lu %s, %lu %s and %lu %s into %s/squashfs-root\n",
                prog, count.files, count.files == 1 ? "file" : "files", count.dirs,
                count.dirs == 1 ? "directory" : "directories", count.links,
                count.links == 1 ? "symlink" : "symlinks", strcmp(cwd, "/") ? cwd : "");
    close(root);
    if (rc && made) (void)remove_tree_at(AT_FDCWD, "squashfs-root");
    return rc ? 1 : 0;
}

/* The official runtime looks only at the first argument that starts with "--". */
static const char *first_long_option(int argc, char **argv) {
    for (int i = 1; i < argc; i++)
        if (!strncmp(argv[i], "--", 2)) return argv[i] + 2;
    return NULL;
}

int main(int argc, char **argv) {
    const char *base = strrchr(argv[0], '/');
    prog = base ? base + 1 : argv[0];
    verbose = getenv("VERBOSE") != NULL;
    char owd[PATH_MAX];
    if (!getcwd(owd, sizeof owd)) snprintf(owd, sizeof owd, "/");

    struct image img = {0};
    const char *arg = first_long_option(argc, argv);
    if (arg && !strcmp(arg, "appimage-help")) return help(), 0;
    if (arg && !strcmp(arg, "appimage-version")) {
        fprintf(stderr, "AppImage runtime version: %s\n", RUNTIME_VERSION);
        return 0;
    }
    open_image(&img);
    prog = strrchr(img.path, '/') + 1; /* messages name the image, not a symlink to it */
    int extract_and_run = getenv("APPIMAGE_EXTRACT_AND_RUN") != NULL;
    if (arg && !strncmp(arg, "appimage", 8)) {
        if (!strcmp(arg, "appimage-offset")) return printf("%lld\n", (long long)img.offset), 0;
        if (!strcmp(arg, "appimage-extract")) {
            if (argc > 3) { fprintf(stderr, "Unexpected argument count: %d\n", argc - 1); return 1; }
            return extract_here(&img, argc == 3 ? argv[2] : NULL);
        }
        if (!strcmp(arg, "appimage-updateinformation") || !strcmp(arg, "appimage-updateinfo"))
            return print_section(&img, ".upd_info"), 0;
        if (!strcmp(arg, "appimage-signature")) return print_section(&img, ".sha256_sig"), 0;
        if (!strcmp(arg, "appimage-portable-home")) return portable(&img, "home");
        if (!strcmp(arg, "appimage-portable-config")) return portable(&img, "config");
        if (!strcmp(arg, "appimage-doctor")) return doctor(&img);
        if (!strcmp(arg, "appimage-manifest")) return print_file(&img, MANIFEST);
        if (!strcmp(arg, "appimage-mount")) {
            char mnt[PATH_MAX], why[PATH_MAX + 64];
            if (join_mount(&img, mnt, sizeof mnt, why, sizeof why) < 0) die("%s", why);
            printf("%s\n", mnt);
            fflush(stdout);
            for (;;) pause();
        }
        if (!strcmp(arg, "appimage-extract-and-run")) {
            extract_and_run = 1;
        } else {
            fprintf(stderr, "--%s is not yet implemented in version %s\n", arg, RUNTIME_VERSION);
            return 1;
        }
    }

    if (extract_and_run) {
        int n = 0;
        for (int i = 0; i < argc; i++)
            if (strcmp(argv[i], "--appimage-extract-and-run")) argv[n++] = argv[i];
        argv[n] = NULL;
        return run_extracted(&img, argv, owd);
    }
    const char *why = fuse_unusable();
    char mnt[PATH_MAX], reason[PATH_MAX + 64];
    int users = why ? -1 : join_mount(&img, mnt, sizeof mnt, reason, sizeof reason);
    if (users == MOUNT_DAMAGED) die("%s", reason); /* extraction would refuse it too */
    if (users < 0) {
        if (!getenv("APPIMAGE_QUIET"))
            fprintf(stderr, "%s: cannot mount (%s); extracting instead\n", prog, why ? why : reason);
        return run_extracted(&img, argv, owd);
    }
    char apprun[PATH_MAX + 8];
    if (path_printf(apprun, sizeof apprun, "%s/AppRun", mnt)) die("%s/AppRun: path too long", mnt);
    set_app_environment(&img, mnt, argv[0], owd);
    execv(apprun, argv);
    die("cannot run %s: %s", apprun, strerror(errno));
}
