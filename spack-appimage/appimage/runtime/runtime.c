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
 *    it mounts with auto_unmount, so a killed server leaves no dead mount;
 *  - a multithreaded FUSE loop;
 *  - no FUSE (no /dev/fuse, no fusermount, mount refused): extraction, with one line
 *    on stderr (silenced by APPIMAGE_QUIET);
 *  - extraction into a cache keyed by an image ID written at build time (no hash of the
 *    whole file at each start), built in a private directory and renamed into place
 *    under a lock, so simultaneous starters wait instead of failing; a tree is removed
 *    only when no process uses it (shared/exclusive locks), and kept with NO_CLEANUP;
 *  - in extract mode the app is a child: INT, TERM, HUP, QUIT, USR1, USR2 and CONT are
 *    forwarded, the exit status passes through, death by signal N exits with 128+N;
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
#include <fnmatch.h>
#include <ftw.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statfs.h>
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

#ifndef RUNTIME_VERSION
#define RUNTIME_VERSION "spack-appimage"
#endif

#define FUSE_SUPER_MAGIC 0x65735546
#define IDLE_MS_DEFAULT 500
/* Seconds the kernel may remember that a name is absent (a day: the image is immutable). */
#define NEGATIVE_TIMEOUT 86400.0
/* Written by `spack appimage` (manifest.py). */
#define MANIFEST ".appimage/manifest.json"

/* Sections that AppImage tools fill in place (sizes fixed by the format), and the
   image ID that `spack appimage` writes at assembly: "<hex id> <unpacked bytes>". */
#define SECTION(name) __attribute__((section(name), used, aligned(1)))
char digest_md5[16] SECTION(".digest_md5") = {0};
char upd_info[1024] SECTION(".upd_info") = {0};
char sha256_sig[1024] SECTION(".sha256_sig") = {0};
char sig_key[8192] SECTION(".sig_key") = {0};
char image_id[128] SECTION(".spack_appimage_id") = {0};

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
    char id[80];           /* cache key */
    unsigned long long unpacked; /* bytes when extracted; 0 if unknown */
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
    if (fd < 0) die("cannot open %s: %s", img->path, strerror(errno));
    img->offset = elf_end(fd);
    struct stat st;
    char magic[4];
    if (img->offset <= 0 || fstat(fd, &st) || st.st_size < img->offset + 96 ||
        read_at(fd, magic, 4, img->offset) || memcmp(magic, "hsqs", 4))
        die("%s has no squashfs image after its runtime (truncated or not an AppImage)",
            img->path);
    char idsec[128] = {0};
    unsigned long long unpacked = 0;
    if (read_section(fd, ".spack_appimage_id", idsec, sizeof idsec) == 0 && idsec[0] &&
        sscanf(idsec, "%64[0-9a-f] %llu", img->id, &unpacked) >= 1) {
        img->unpacked = unpacked;
    } else { /* an image made by other tools: key the cache by the file's identity */
        snprintf(img->id, sizeof img->id, "f%lx-%lx-%lx-%lx", (unsigned long)st.st_dev,
                 (unsigned long)st.st_ino, (unsigned long)st.st_size, (unsigned long)st.st_mtime);
    }
    close(fd);
}

static void print_section(const struct image *img, const char *name) {
    int fd = open(img->path, O_RDONLY | O_CLOEXEC);
    char buf[8193] = {0};
    if (fd < 0 || read_section(fd, name, buf, sizeof buf)) die("cannot read section %s", name);
    printf("%s\n", buf);
    close(fd);
}

/* ------------------------------------------------------- where to mount or extract */

/* A private directory <candidate>/spack-appimage-<uid>: created 0700, or reused only
   if it is a real directory of ours that nobody else can write. */
static int private_base(const char *candidate, char *out, size_t cap) {
    if (path_printf(out, cap, "%s/spack-appimage-%u", candidate, (unsigned)getuid())) {
        say("skipping %s: path too long", candidate);
        return -1;
    }
    if (mkdir(out, 0700) && errno != EEXIST) return -1;
    struct stat st;
    if (lstat(out, &st) || !S_ISDIR(st.st_mode)) {
        fprintf(stderr, "%s: refusing %s: not a directory\n", prog, out);
        return -1;
    }
    if (st.st_uid != getuid() || (st.st_mode & 077)) {
        fprintf(stderr, "%s: refusing %s: owned by uid %u or open to others\n", prog, out,
                (unsigned)st.st_uid);
        return -1;
    }
    return 0;
}

/* Candidates in order: $TMPDIR, $XDG_RUNTIME_DIR, /tmp, /var/tmp, /dev/shm. */
static int candidates(const char *list[6]) {
    int n = 0;
    const char *env[] = {getenv("TMPDIR"), getenv("XDG_RUNTIME_DIR")};
    for (int i = 0; i < 2; i++)
        if (env[i] && *env[i]) list[n++] = env[i];
    list[n++] = "/tmp";
    list[n++] = "/var/tmp";
    list[n++] = "/dev/shm";
    return n;
}

/* The first candidate that takes a private directory, with exec allowed and `need`
   free bytes when asked. */
static int pick_base(int need_exec, unsigned long long need, char *out, size_t cap) {
    const char *list[6];
    int n = candidates(list);
    for (int i = 0; i < n; i++) {
        struct statvfs sv;
        if (statvfs(list[i], &sv)) continue;
        if (need_exec && (sv.f_flag & ST_NOEXEC)) {
            say("skipping %s: mounted noexec", list[i]);
            continue;
        }
        if (need && (unsigned long long)sv.f_bavail * sv.f_frsize < need) {
            say("skipping %s: less than %llu bytes free", list[i], need);
            continue;
        }
        if (private_base(list[i], out, cap) == 0) return 0;
    }
    return -1;
}

static int open_lock(const char *dir, const char *name) {
    char path[PATH_MAX];
    if (path_printf(path, sizeof path, "%s/%s", dir, name)) return -1;
    return open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
}

/* ------------------------------------------------------------------- environment */

static void set_app_environment(const struct image *img, const char *appdir,
                                const char *argv0, const char *owd) {
    setenv("APPIMAGE", img->path, 1);
    setenv("APPDIR", appdir, 1);
    setenv("ARGV0", argv0, 1);
    setenv("OWD", owd, 1);
    char portable[PATH_MAX + 16];
    struct stat st;
    if (!path_printf(portable, sizeof portable, "%s.home", img->path) && !stat(portable, &st) && S_ISDIR(st.st_mode) && !access(portable, W_OK)) {
        fprintf(stderr, "Setting $HOME to %s\n", portable);
        setenv("HOME", portable, 1);
    }
    if (!path_printf(portable, sizeof portable, "%s.config", img->path) && !stat(portable, &st) && S_ISDIR(st.st_mode) && !access(portable, W_OK)) {
        fprintf(stderr, "Setting $XDG_CONFIG_HOME to %s\n", portable);
        setenv("XDG_CONFIG_HOME", portable, 1);
    }
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

static int find_fusermount(char *out, size_t cap);
static int is_mounted(const char *mnt);

/* 0 when `mnt` was unmounted, -1 if it is busy or the unmount failed. */
static int unmount_now(const char *mnt) {
    if (getuid() == 0) return umount2(mnt, 0);
    char fusermount[PATH_MAX];
    if (find_fusermount(fusermount, sizeof fusermount)) return -1;
    pid_t pid = fork();
    if (pid == 0) {
        int null = open("/dev/null", O_RDWR);
        if (null < 0 || dup2(null, 1) < 0 || dup2(null, 2) < 0) _exit(1);
        execl(fusermount, fusermount, "-u", "-q", mnt, (char *)NULL);
        _exit(1);
    }
    int status;
    if (pid < 0 || waitpid(pid, &status, 0) < 0) return -1;
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

/* The mount's directory: mount point, lock files, the directory itself. */
static void remove_mount_dir(const char *dir) {
    const char *names[] = {"mnt", "users", "lock"};
    char path[PATH_MAX];
    for (int i = 0; i < 3; i++) {
        if (path_printf(path, sizeof path, "%s/%s", dir, names[i])) return;
        if (i == 0) (void)rmdir(path); else (void)unlink(path); /* gone already: fine */
    }
    (void)rmdir(dir); /* a launcher may have recreated a file in it: it stays */
}

/* Whether the open file `fd` is still the file at dir/name (not unlinked or replaced
   since it was opened). */
static int still_linked(int fd, const char *dir, const char *name) {
    char path[PATH_MAX];
    struct stat opened, named;
    return !path_printf(path, sizeof path, "%s/%s", dir, name) && !fstat(fd, &opened) && !lstat(path, &named) && opened.st_ino == named.st_ino &&
           opened.st_dev == named.st_dev;
}

struct server {
    struct fuse_session *se;
    const char *dir, *mnt;
    long idle_ms;
    int lock, users;       /* the mount's lock files */
    pthread_mutex_t mutex; /* held by the watcher while it holds a lock, by the main
                              thread once the FUSE loop has returned */
    int loop_done;         /* the FUSE loop has returned */
    int unmounted;         /* the watcher unmounted and removed the mount's directory */
};

/* After an unmount found the mount busy (a process inside it without the users lock),
   the watcher tries again after this long at the least, whatever the idle time. */
#define BUSY_RETRY_MS 1000

static void sleep_ms(long ms) {
    struct timespec left = {ms / 1000, ms % 1000 * 1000000L};
    while (nanosleep(&left, &left) && errno == EINTR) continue;
}

/* Unmounts once no app has held the users lock for idle_ms, without polling: it sleeps
   in a blocking flock until the last app has left (the kernel wakes it), then once for
   idle_ms, then checks. Holding the lock alone, it sets the users file's mtime to 0;
   launchers touch the file as they arrive (join_mount), so an app that came and went
   during that sleep shows as a non-zero mtime whatever the clock's granularity, and the
   wait starts over. The mount lock is taken first, so no launcher is between "is it
   mounted?" and taking its users lock. */
static void *watch_users(void *arg) {
    struct server *s = arg;
    static const struct timespec epoch[2] = {{0, 0}, {0, 0}};
    long pause = s->idle_ms;
    for (;;) {
        if (flock(s->users, LOCK_EX)) {
            if (errno == EINTR) continue;
            return NULL; /* cannot watch: the mount stays until the kernel ends it */
        }
        int stamped = !futimens(s->users, epoch);
        (void)flock(s->users, LOCK_UN); /* launchers must not wait on this lock */
        sleep_ms(pause);
        pause = s->idle_ms;
        pthread_mutex_lock(&s->mutex);
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
            pause = s->idle_ms > BUSY_RETRY_MS ? s->idle_ms : BUSY_RETRY_MS;
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

/* Tells the launcher why the server cannot serve ("E<message>"), and exits. */
static void refuse(int ready, const char *fmt, ...) __attribute__((noreturn, format(printf, 2, 3)));
static void refuse(int ready, const char *fmt, ...) {
    char msg[PATH_MAX + 64] = "E";
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg + 1, sizeof msg - 1, fmt, ap);
    va_end(ap);
    (void)!write(ready, msg, strlen(msg));
    _exit(1);
}

/* The server process: mounts, reports on `ready` ("R" or "E<message>"), serves. */
static void serve(const struct image *img, const char *dir, const char *mnt, int ready) {
    struct server s = {.dir = dir, .mnt = mnt, .idle_ms = IDLE_MS_DEFAULT,
                       .lock = open_lock(dir, "lock"), .users = open_lock(dir, "users"),
                       .mutex = PTHREAD_MUTEX_INITIALIZER};
    const char *idle = getenv("APPIMAGE_IDLE_MS");
    char *end;
    long value = idle ? strtol(idle, &end, 10) : -1;
    if (idle && *idle && !*end && value >= 0) s.idle_ms = value; /* else the default */
    if (s.lock < 0 || s.users < 0) refuse(ready, "cannot open the locks in %s", dir);
    sqfs_ll *ll = sqfs_ll_open(img->path, img->offset);
    if (!ll) refuse(ready, "cannot open the squashfs in %s", img->path);
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
        refuse(ready, "cannot make the mount options for %s", img->path);
    char *argv[] = {(char *)prog, "-o", options, NULL};
    struct fuse_args args = FUSE_ARGS_INIT(3, argv);
    s.se = fuse_session_new(&args, &ops, sizeof ops, ll);
    if (!s.se || fuse_session_mount(s.se, mnt)) refuse(ready, "the FUSE mount of %s failed", mnt);
    pthread_t watcher;
    int error = pthread_create(&watcher, NULL, watch_users, &s);
    if (error) {
        fuse_session_unmount(s.se);
        refuse(ready, "cannot start the server's watcher: %s", strerror(error));
    }
    (void)!write(ready, "R", 1);
    close(ready);
    struct fuse_loop_config config = {.clone_fd = 0, .max_idle_threads = 10};
    fuse_session_loop_mt(s.se, &config);
    /* The loop ends when the watcher unmounted, or when the kernel ended the connection
       (the mount was detached, or aborted): then the directory goes if nobody uses it.
       The locks are the watcher's descriptors, so a watcher that holds one does not
       make them look taken. */
    pthread_mutex_lock(&s.mutex);
    s.loop_done = 1;
    if (!s.unmounted && !flock(s.lock, LOCK_EX | LOCK_NB) &&
        !flock(s.users, LOCK_EX | LOCK_NB) && !is_mounted(mnt)) /* not a newer server's */
        remove_mount_dir(dir);
    _exit(0);
}

/* The setuid-root fusermount3 in PATH that libfuse 3 runs to mount when not root
   (libfuse 3 does not run fuse2's plain `fusermount`). */
static int find_fusermount(char *out, size_t cap) {
    const char *path = getenv("PATH");
    struct stat st;
    if (!path) return -1;
    char *copy = strdup(path), *save = NULL;
    for (char *d = strtok_r(copy, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
        if (!path_printf(out, cap, "%s/fusermount3", d) && !stat(out, &st) && st.st_uid == 0 && (st.st_mode & S_ISUID)) {
            free(copy);
            return 0;
        }
    }
    free(copy);
    return -1;
}

/* Why FUSE cannot be used here, or NULL. */
static const char *fuse_unusable(void) {
    if (access("/dev/fuse", R_OK | W_OK)) return "/dev/fuse is missing or not accessible";
    char fusermount[PATH_MAX];
    if (getuid() != 0 && find_fusermount(fusermount, sizeof fusermount))
        return "no setuid fusermount3 in PATH";
    return NULL;
}

static int is_mounted(const char *mnt) {
    struct statfs sf;
    struct stat here, parent;
    char up[PATH_MAX + 4];
    return !path_printf(up, sizeof up, "%s/..", mnt) && !statfs(mnt, &sf) && (unsigned)sf.f_type == FUSE_SUPER_MAGIC && !stat(mnt, &here) &&
           !stat(up, &parent) && here.st_dev != parent.st_dev;
}

/* A mount whose server died without auto_unmount (e.g. root without fusermount3). */
static void clear_dead_mount(const char *mnt) {
    char fusermount[PATH_MAX];
    if (getuid() == 0 && !umount2(mnt, MNT_DETACH)) return;
    if (find_fusermount(fusermount, sizeof fusermount)) return;
    pid_t pid = fork();
    if (pid == 0) {
        execl(fusermount, fusermount, "-u", "-z", mnt, (char *)NULL);
        _exit(1);
    }
    if (pid > 0) waitpid(pid, NULL, 0);
}

/* Closes every descriptor from `low` up but `keep`: with close_range where the kernel
   has it (Linux 5.9+), else each one /proc/self/fd lists (RHEL 8's 4.18 kernel), else
   every number below the descriptor limit. */
static void close_descriptors(int low, int keep) {
    int below = keep > low ? close_range(low, keep - 1, 0) : 0;
    if (!below && !close_range(keep >= low ? keep + 1 : low, ~0U, 0)) return;
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            int fd = atoi(e->d_name);
            if (e->d_name[0] != '.' && fd >= low && fd != keep && fd != dirfd(d)) close(fd);
        }
        closedir(d);
        return;
    }
    /* Capped: a container's limit can be 2^30, a billion close() calls. */
    struct rlimit limit;
    long max = getrlimit(RLIMIT_NOFILE, &limit) || limit.rlim_cur > 65536
                   ? 65536 : (long)limit.rlim_cur;
    for (int fd = low; fd < max; fd++)
        if (fd != keep) close(fd);
}

/* Starts the server in its own session, detached from this process, and waits until
   it has mounted. Returns 0, or -1 with the reason in `why`. */
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
        close_descriptors(3, ready);
        /* A failure here ends the server before "R": the launcher reports it died. */
        if (setsid() < 0) _exit(1);
        pid_t server = fork();
        if (server) _exit(server < 0);
        int null = open("/dev/null", O_RDWR);
        if (chdir("/") || null < 0 || dup2(null, 0) < 0 || dup2(null, 1) < 0 ||
            dup2(null, 2) < 0)
            _exit(1);
        if (null > 2) close(null);
        serve(img, dir, mnt, ready);
    }
    close(pipefd[1]);
    waitpid(first, NULL, 0);
    char reply[PATH_MAX + 64] = {0};
    ssize_t n = read(pipefd[0], reply, sizeof reply - 1);
    close(pipefd[0]);
    if (n > 0 && reply[0] == 'R') return 0;
    snprintf(why, cap, "%s", n > 1 ? reply + 1 : "the FUSE server died");
    return -1;
}

/* Mounts (or joins the mount of) the image; returns the users-lock fd the app must
   keep open, or -1 with the reason in `why`. */
static int join_mount(const struct image *img, char *mnt, size_t cap, char *why, size_t wcap) {
    char base[PATH_MAX], dir[PATH_MAX];
    if (pick_base(0, 0, base, sizeof base))
        return snprintf(why, wcap, "no usable directory for the mount point"), -1;
    /* One mount per mount namespace: launches in other namespaces (containers,
       unshare -m, job sandboxes) that share this directory cannot see the mount. */
    struct stat ns;
    int too_long = stat("/proc/self/ns/mnt", &ns) == 0
        ? path_printf(dir, sizeof dir, "%s/%s-%llu", base, img->id, (unsigned long long)ns.st_ino)
        : path_printf(dir, sizeof dir, "%s/%s", base, img->id);
    if (too_long || path_printf(mnt, cap, "%s/mnt", dir))
        return snprintf(why, wcap, "the mount point's path in %s is too long", base), -1;
    if (mkdir(dir, 0700) && errno != EEXIST)
        return snprintf(why, wcap, "mkdir %s: %s", dir, strerror(errno)), -1;
    int users, lock;
    for (int attempt = 0;; attempt++) {
        users = open_lock(dir, "users"), lock = open_lock(dir, "lock");
        if (users < 0 || lock < 0) {
            int error = errno;
            if (users >= 0) close(users);
            if (lock >= 0) close(lock);
            /* A server removed the directory between our mkdir and open: again. */
            if (error == ENOENT && attempt < 100 && !(mkdir(dir, 0700) && errno != EEXIST))
                continue;
            return snprintf(why, wcap, "cannot create locks in %s: %s", dir, strerror(error)), -1;
        }
        if (flock(users, LOCK_SH) || flock(lock, LOCK_EX)) {
            snprintf(why, wcap, "cannot lock %s: %s", dir, strerror(errno));
            close(users), close(lock);
            return -1;
        }
        if (still_linked(users, dir, "users") && still_linked(lock, dir, "lock")) break;
        close(users), close(lock); /* a server removed them while we waited: again */
        if (mkdir(dir, 0700) && errno != EEXIST)
            return snprintf(why, wcap, "mkdir %s: %s", dir, strerror(errno)), -1;
    }
    int rc = 0;
    if (futimens(users, NULL)) { /* an arrival, for the server's idle timer (watch_users) */
        snprintf(why, wcap, "cannot mark %s/users: %s", dir, strerror(errno));
        rc = -1;
    } else if (!is_mounted(mnt)) {
        struct statfs sf;
        if (statfs(mnt, &sf) && errno == ENOTCONN) clear_dead_mount(mnt);
        if (mkdir(mnt, 0700) && errno != EEXIST) {
            snprintf(why, wcap, "mkdir %s: %s", mnt, strerror(errno));
            rc = -1;
        } else {
            say("mounting %s at %s", img->path, mnt);
            rc = start_server(img, dir, mnt, why, wcap);
        }
    } else {
        say("joining the mount at %s", mnt);
    }
    close(lock); /* releases the mount lock */
    if (rc) {
        close(users);
        return -1;
    }
    if (fcntl(users, F_SETFD, 0)) { /* inherited by the app: its shared lock keeps the mount */
        close(users);
        return snprintf(why, wcap, "fcntl: %s", strerror(errno)), -1;
    }
    return users;
}

/* ---------------------------------------------------------------- extraction */

/* Writes the content of the regular file `inode` to `fd`; 0, or -1 on a read or
   write error (a short write, such as a full disk, is an error). */
static int copy_file(sqfs *fs, sqfs_inode *inode, int fd) {
    static char buf[1 << 17];
    off_t size = inode->xtra.reg.file_size, pos = 0;
    while (pos < size) {
        sqfs_off_t n = size - pos < (off_t)sizeof buf ? size - pos : (off_t)sizeof buf;
        if (sqfs_read_range(fs, inode, pos, &n, buf) || write(fd, buf, n) != n) return -1;
        pos += n;
    }
    return 0;
}

static int write_file(sqfs *fs, sqfs_inode *inode, int dirfd, const char *name, mode_t mode) {
    int fd = openat(dirfd, name, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) return -1;
    if (copy_file(fs, inode, fd)) {
        close(fd);
        return -1;
    }
    if (fchmod(fd, mode)) {
        close(fd);
        return -1;
    }
    return close(fd);
}

/* The directory that holds `path` (relative to `rootfd`), created as needed; every
   component must be a real directory: a symlink or ".." in the image (or planted in an
   existing tree) cannot lead the extraction elsewhere. Returns an fd; *leaf is the last
   component. */
static int open_parent(int rootfd, char *path, const char **leaf) {
    int dirfd = dup(rootfd);
    if (dirfd < 0) return -1;
    char *save = NULL, *part = strtok_r(path, "/", &save), *next;
    for (; part && (next = strtok_r(NULL, "/", &save)); part = next) {
        if (!strcmp(part, ".") || !strcmp(part, "..")) break;
        if (mkdirat(dirfd, part, 0755) && errno != EEXIST) {
            close(dirfd);
            return -1;
        }
        int sub = openat(dirfd, part, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        close(dirfd);
        if (sub < 0) return -1;
        dirfd = sub;
    }
    if (!part || !strcmp(part, ".") || !strcmp(part, "..")) {
        close(dirfd);
        errno = EINVAL;
        return -1;
    }
    *leaf = part;
    return dirfd;
}

static int extract_entry(sqfs *fs, sqfs_inode *inode, int dirfd, const char *name) {
    mode_t mode = inode->base.mode & 0777;
    if (S_ISDIR(inode->base.mode)) {
        if (mkdirat(dirfd, name, 0700) && errno != EEXIST) return -1;
        int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0) return -1;
        if (fchmod(fd, mode | 0700)) {
            close(fd);
            return -1;
        }
        return close(fd);
    }
    if (S_ISREG(inode->base.mode)) {
        if (unlinkat(dirfd, name, 0) && errno != ENOENT) return -1;
        return write_file(fs, inode, dirfd, name, mode);
    }
    if (S_ISLNK(inode->base.mode)) {
        char target[PATH_MAX];
        size_t size = sizeof target;
        if (sqfs_readlink(fs, inode, target, &size)) return -1;
        if (unlinkat(dirfd, name, 0) && errno != ENOENT) return -1;
        return symlinkat(target, dirfd, name);
    }
    return 0; /* devices and fifos are not extracted */
}

/* Opens the image's squashfs for reading (extraction, --appimage-manifest); says why
   not on stderr. */
static int open_squashfs(const struct image *img, sqfs *fs) {
    if (!sqfs_open_image(fs, img->path, img->offset)) return 0;
    fprintf(stderr, "%s: cannot open the squashfs of %s\n", prog, img->path);
    return -1;
}

static void close_squashfs(sqfs *fs) {
    close(fs->fd); /* sqfs_destroy leaves the image's descriptor open */
    sqfs_destroy(fs);
}

/* Extracts every path matching `pattern` (all if NULL) under the directory `root`. */
static int extract(const struct image *img, const char *root, const char *pattern) {
    sqfs fs;
    if (open_squashfs(img, &fs)) return -1;
    int rootfd = open(root, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    sqfs_traverse trv;
    if (rootfd < 0 || sqfs_traverse_open(&trv, &fs, sqfs_inode_root(&fs))) {
        fprintf(stderr, "%s: cannot extract into %s: %s\n", prog, root, strerror(errno));
        if (rootfd >= 0) close(rootfd);
        close_squashfs(&fs);
        return -1;
    }
    sqfs_err err = SQFS_OK;
    int rc = 0;
    while (rc == 0 && sqfs_traverse_next(&trv, &err)) {
        if (trv.dir_end) continue;
        if (pattern && fnmatch(pattern, trv.path, FNM_PATHNAME | FNM_LEADING_DIR)) continue;
        char path[PATH_MAX];
        const char *leaf;
        sqfs_inode inode;
        int dirfd = path_printf(path, sizeof path, "%s", trv.path) ? -1
                    : open_parent(rootfd, path, &leaf);
        if (dirfd < 0 || sqfs_inode_get(&fs, &inode, sqfs_dentry_inode(&trv.entry)) ||
            extract_entry(&fs, &inode, dirfd, leaf)) {
            fprintf(stderr, "%s: cannot extract %s into %s: %s\n", prog, trv.path, root,
                    strerror(errno));
            rc = -1;
        }
        if (dirfd >= 0) close(dirfd);
        if (verbose && rc == 0) fprintf(stderr, "%s\n", trv.path);
    }
    if (err && rc == 0) {
        fprintf(stderr, "%s: the squashfs of %s is damaged\n", prog, img->path);
        rc = -1;
    }
    sqfs_traverse_close(&trv);
    close(rootfd);
    close_squashfs(&fs);
    return rc;
}

static int remove_entry(const char *path, const struct stat *st, int type, struct FTW *ftw) {
    (void)st, (void)ftw;
    return type == FTW_DP ? rmdir(path) : unlink(path);
}

static int remove_tree(const char *path) {
    return nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* Removes what an interrupted extraction or cleanup left (the lock is held). */
static void remove_stale(const char *dir) {
    DIR *d = opendir(dir);
    struct dirent *e;
    char path[PATH_MAX * 2];
    while (d && (e = readdir(d))) {
        if (strncmp(e->d_name, "tmp.", 4) && strcmp(e->d_name, "root.old")) continue;
        if (!path_printf(path, sizeof path, "%s/%s", dir, e->d_name)) (void)remove_tree(path);
    }
    if (d) closedir(d);
}

/* Extracts into the cache once (private temp dir, then rename, under the lock); returns
   the users-lock fd that marks this process as using the tree. */
static int join_extraction(const struct image *img, char *root, size_t cap, char *dir, size_t dcap) {
    char base[PATH_MAX];
    if (pick_base(1, img->unpacked, base, sizeof base))
        die("no directory allows extraction (exec allowed, %llu bytes free, private): "
            "set TMPDIR to a node-local directory", img->unpacked);
    if (path_printf(dir, dcap, "%s/%s", base, img->id) || path_printf(root, cap, "%s/root", dir))
        die("the extraction's path in %s is too long: set TMPDIR to a shorter directory", base);
    if (mkdir(dir, 0700) && errno != EEXIST) die("mkdir %s: %s", dir, strerror(errno));
    int lock = open_lock(dir, "lock"), users = open_lock(dir, "users");
    if (lock < 0 || users < 0) die("cannot create locks in %s", dir);
    if (flock(lock, LOCK_EX)) die("cannot lock %s: %s", dir, strerror(errno));
    remove_stale(dir);
    if (access(root, F_OK)) {
        char tmp[PATH_MAX];
        if (path_printf(tmp, sizeof tmp, "%s/tmp.XXXXXX", dir) || !mkdtemp(tmp))
            die("cannot make a directory in %s: %s", dir, strerror(errno));
        say("extracting %s to %s", img->path, root);
        if (extract(img, tmp, NULL) || rename(tmp, root)) {
            remove_tree(tmp);
            die("cannot extract %s into %s", img->path, dir);
        }
    }
    if (flock(users, LOCK_SH)) die("cannot lock %s: %s", dir, strerror(errno));
    close(lock);
    return users;
}

/* Removes the tree if nobody else uses it (and NO_CLEANUP is not set). */
static void leave_extraction(const char *dir, const char *root, int users) {
    close(users);
    if (getenv("NO_CLEANUP")) return;
    int lock = open_lock(dir, "lock");
    users = open_lock(dir, "users");
    /* Without the lock the tree stays, for the next run to reuse or remove. */
    if (lock >= 0 && users >= 0 && !flock(lock, LOCK_EX) && !flock(users, LOCK_EX | LOCK_NB)) {
        remove_stale(dir);
        char doomed[PATH_MAX + 16];
        if (!path_printf(doomed, sizeof doomed, "%s.old", root) && !rename(root, doomed))
            (void)remove_tree(doomed); /* what is left is removed by the next remove_stale */
    }
    if (users >= 0) close(users);
    if (lock >= 0) close(lock);
}

static volatile pid_t child;

/* Passes a signal sent to the runtime on to the app. One from the terminal (SI_KERNEL)
   already reached the app, which is in the same process group. */
static void forward(int sig, siginfo_t *info, void *context) {
    (void)context;
    if (child > 0 && info->si_code != SI_KERNEL) kill(child, sig);
}

static int run_extracted(const struct image *img, char **argv, const char *owd) {
    char root[PATH_MAX], dir[PATH_MAX], apprun[PATH_MAX + 8];
    int users = join_extraction(img, root, sizeof root, dir, sizeof dir);
    if (path_printf(apprun, sizeof apprun, "%s/AppRun", root)) die("%s/AppRun: path too long", root);
    const char *argv0 = argv[0];
    set_app_environment(img, root, argv0, owd);
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
        if (fcntl(users, F_SETFD, 0)) _exit(EXIT_RUNTIME);
        execv(apprun, argv);
        fprintf(stderr, "%s: cannot run %s: %s\n", prog, apprun, strerror(errno));
        _exit(EXIT_RUNTIME);
    }
    child = pid;
    sigprocmask(SIG_SETMASK, &previous, NULL);
    int status;
    while (waitpid(child, &status, 0) < 0)
        if (errno != EINTR) die("waitpid: %s", strerror(errno));
    child = 0;
    leave_extraction(dir, root, users);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return WEXITSTATUS(status);
}

/* Copies the regular file at `path` inside the squashfs to stdout, without a mount:
   how --appimage-manifest shows the provenance manifest. */
static int print_file(const struct image *img, const char *path) {
    sqfs fs;
    if (open_squashfs(img, &fs)) return 1;
    sqfs_inode inode;
    bool found = false;
    int rc = 0;
    if (sqfs_inode_get(&fs, &inode, sqfs_inode_root(&fs)) ||
        sqfs_lookup_path(&fs, &inode, path, &found) || !found ||
        !S_ISREG(inode.base.mode)) {
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
        "  --appimage-doctor                report what this host allows (FUSE, directories)\n"
        "  --appimage-manifest              print the provenance manifest (JSON) of the image\n\n"
        "Environment: APPIMAGE_EXTRACT_AND_RUN (extract instead of mounting), NO_CLEANUP\n"
        "(keep the extracted copy), TMPDIR (first place to mount or extract), TARGET_APPIMAGE\n"
        "(operate on that file), VERBOSE, APPIMAGE_QUIET (no line when falling back to\n"
        "extraction), APPIMAGE_IDLE_MS (how long a shared mount outlives its last user).\n"
        "Failures exit with 127; in extract mode an app killed by signal N exits with 128+N.\n",
        RUNTIME_VERSION);
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
        if (statvfs(list[i], &sv)) { printf("directory %s: missing\n", list[i]); continue; }
        printf("directory %s: exec %s, %llu MiB free, writable %s\n", list[i],
               (sv.f_flag & ST_NOEXEC) ? "NOT allowed" : "allowed",
               (unsigned long long)sv.f_bavail * sv.f_frsize >> 20,
               access(list[i], W_OK) ? "no" : "yes");
    }
    if (img->unpacked) printf("extraction needs: %llu MiB\n", img->unpacked >> 20);
    return 0;
}

static int portable(const struct image *img, const char *suffix) {
    char path[PATH_MAX + 16];
    if (path_printf(path, sizeof path, "%s.%s", img->path, suffix) ||
        (mkdir(path, 0700) && errno != EEXIST))
        fprintf(stderr, "Error creating portable %s directory %s: %s\n", suffix, path, strerror(errno));
    else
        fprintf(stderr, "Portable %s directory created at %s\n", suffix, path);
    return 0;
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
            mkdir("squashfs-root", 0755);
            return extract(&img, "squashfs-root", argc == 3 ? argv[2] : NULL) ? 1 : 0;
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
