/*
 * The per-user directory where the runtime mounts and extracts, held by descriptor.
 *
 * On a shared node another user must not be able to make the runtime use a tree of
 * theirs, whatever they do in a directory they can write. So:
 *  - a candidate (TMPDIR, /tmp, ...) is used only if no other user can rename an entry
 *    on its path: every directory from / down is owned by us or root, and is either
 *    closed to writes by group and others or sticky with the next entry ours or root's.
 *    The app later looks up APPDIR and the mount point by name: a path that only we or
 *    root can change names the same files for as long as the app runs;
 *  - the directories are opened component by component with O_NOFOLLOW and checked with
 *    fstat, and every step below is an *at call on those descriptors;
 *  - inside a user namespace (unshare -r, rootless containers) the host's root and every
 *    other user show as the same overflow uid: such a directory is trusted only if it is
 *    one of the system's own (/, /tmp, /var/tmp, /dev/shm, ...: is_system_dir);
 *  - the predictable name <candidate>/spack-appimage-<uid> may be taken (squatted by
 *    another user, or by another user who is uid 0 too in a rootless container): then
 *    spack-appimage-<uid>.<keyed hash> (secret.c) is used, the same at every launch
 *    without listing the candidate, so a user's launches still share their mounts and
 *    extracted copies.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "runtime.h"

/* The owner shown for files of users outside our user namespace (rootless containers,
   unshare -r: the host's root among them), or -1 in the initial namespace. */
static long unmapped_owner(void) {
    static long owner = -2;
    if (owner != -2) return owner;
    owner = -1;
    unsigned long inside, outside, count;
    FILE *f = fopen("/proc/self/uid_map", "re");
    int initial = f && fscanf(f, "%lu %lu %lu", &inside, &outside, &count) == 3 &&
                  inside == 0 && outside == 0 && count == 4294967295UL;
    if (f) fclose(f);
    if (initial || !(f = fopen("/proc/sys/kernel/overflowuid", "re"))) return owner;
    if (fscanf(f, "%ld", &owner) != 1) owner = -1;
    fclose(f);
    return owner;
}

/* The directory `rel` below `dir`, opened a component at a time without following a
   link (O_PATH), or -1. */
static int open_below(int dir, const char *rel) {
    char copy[PATH_MAX], *save = NULL;
    int fd = dup(dir);
    snprintf(copy, sizeof copy, "%s", rel);
    for (char *part = strtok_r(copy, "/", &save); fd >= 0 && part;
         part = strtok_r(NULL, "/", &save)) {
        int sub = openat(fd, part, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        close(fd);
        fd = sub;
    }
    return fd;
}

/* Whether `st` is one of the system's shared directories. Inside a user namespace the
   overflow uid stands for the host's root and for every other user alike, so owning a
   directory as the overflow uid says nothing: only these, known by device and inode
   (read once, from /, when the process starts to look), are the host root's. /home is
   among them for the user's own files below it (<image>.home, the key of secret.c). */
static int is_system_dir(const struct stat *st) {
    static const char *const names[] = {".", "tmp", "var", "var/tmp", "dev", "dev/shm",
                                        "run", "run/user", "home"};
    enum { N = sizeof names / sizeof *names };
    static struct { dev_t dev; ino_t ino; } known[N];
    static int count = -1;
    if (count < 0) {
        int root = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
        struct stat here;
        count = 0;
        for (int i = 0; root >= 0 && i < N; i++) {
            int fd = open_below(root, names[i]);
            if (fd >= 0 && !fstat(fd, &here))
                known[count].dev = here.st_dev, known[count++].ino = here.st_ino;
            if (fd >= 0) close(fd);
        }
        if (root >= 0) close(root);
    }
    for (int i = 0; i < count; i++)
        if (known[i].dev == st->st_dev && known[i].ino == st->st_ino) return 1;
    return 0;
}

/* Whether the owner of `st` may decide what our paths name: we, root, or, inside a user
   namespace, the host's root for the system's directories (is_system_dir). */
static int trusted(const struct stat *st) {
    if (st->st_uid == getuid() || st->st_uid == 0) return 1;
    return (long)st->st_uid == unmapped_owner() && is_system_dir(st);
}

/* Whether only trusted users can rename or replace an entry (`entry_trusted`: whether
   its owner is trusted) in the directory `parent` (the sticky bit keeps others from
   renaming what is not theirs). */
static int entry_stays(const struct stat *parent, int entry_trusted) {
    if (!trusted(parent)) return 0;
    return !(parent->st_mode & 022) || ((parent->st_mode & S_ISVTX) && entry_trusted);
}

/* Whose a file of `uid` is, for messages. */
static const char *owner_note(uid_t uid) {
    return (long)uid == unmapped_owner() ? ", a user outside this user namespace" : "";
}

/* Why `entry` (owned by `entry_uid`) in the directory `dir` (stat `st`) fails
   entry_stays. */
static void say_why_not(const struct stat *st, const char *dir, const char *entry,
                        uid_t entry_uid, char *why, size_t cap) {
    if (!trusted(st))
        snprintf(why, cap, "%s is another user's (uid %u%s)", dir, (unsigned)st->st_uid,
                 owner_note(st->st_uid));
    else if (!(st->st_mode & S_ISVTX))
        snprintf(why, cap, "other users can rename %s in %s (writable by others, not sticky)",
                 entry, dir);
    else
        snprintf(why, cap, "%s in %s is another user's (uid %u%s)", entry, dir,
                 (unsigned)entry_uid, owner_note(entry_uid));
}

/* Opens the directory `path` (absolute, without symlinks or dot components) from / one
   component at a time without following links; -1 with the reason in `why` when some
   component could be replaced by another user. O_PATH: search permission is enough. */
int open_stable(const char *path, char *why, size_t cap) {
    int fd = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
    struct stat parent, here;
    if (fd < 0 || fstat(fd, &parent)) return snprintf(why, cap, "/: %s", strerror(errno)), -1;
    char copy[PATH_MAX], *save = NULL;
    snprintf(copy, sizeof copy, "%s", path);
    for (char *part = strtok_r(copy, "/", &save); part; part = strtok_r(NULL, "/", &save)) {
        int sub = openat(fd, part, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        int error = errno;
        close(fd);
        if (sub < 0) return snprintf(why, cap, "%s: %s", part, strerror(error)), -1;
        fd = sub;
        if (fstat(fd, &here)) {
            snprintf(why, cap, "%s: %s", part, strerror(errno));
            return close(fd), -1;
        }
        if (!entry_stays(&parent, trusted(&here))) {
            char dir[PATH_MAX];
            snprintf(dir, sizeof dir, "%.*s", (int)(part - copy - 1), path);
            say_why_not(&parent, *dir ? dir : "/", part, here.st_uid, why, cap);
            return close(fd), -1;
        }
        parent = here;
    }
    return fd;
}

/* Whether `st` is a directory of ours that nobody else can enter or write. */
static int is_private(const struct stat *st) {
    return S_ISDIR(st->st_mode) && st->st_uid == getuid() && !(st->st_mode & 077);
}

int private_subdir(int parent, const char *name, int *created) {
    int made = 0, fd = -1;
    /* The last user of an image removes its directory (extract.c's drop_image_dir, the
       mount's cleanup): one that existed at mkdirat may be gone at openat; make it again. */
    for (int attempt = 0; fd < 0 && attempt < 100; attempt++) {
        made = mkdirat(parent, name, 0700) == 0;
        if (!made && errno != EEXIST) return -1;
        fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0 && (made || errno != ENOENT)) break;
    }
    if (created) *created = made;
    struct stat st;
    if (fd < 0) {
        /* a symlink, a file, another user's closed directory: taken */
        if (errno == ELOOP || errno == ENOTDIR || errno == EACCES) errno = EPERM;
        return -1;
    }
    if (fstat(fd, &st) || !is_private(&st)) {
        close(fd);
        errno = EPERM;
        return -1;
    }
    return fd;
}

int make_temp_dir(int parent, const char *prefix, char *name, size_t cap) {
    static const char letters[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    for (int attempt = 0; attempt < 100; attempt++) {
        unsigned char random[8];
        if (getrandom(random, sizeof random, 0) != sizeof random) return -1;
        char suffix[sizeof random + 1];
        for (size_t i = 0; i < sizeof random; i++) suffix[i] = letters[random[i] % 62];
        suffix[sizeof random] = '\0';
        if (path_printf(name, cap, "%s.%s", prefix, suffix)) return -1;
        int created, fd = private_subdir(parent, name, &created);
        if (fd >= 0 && created) return fd;
        if (fd >= 0) close(fd); /* someone's, or ours from before: not fresh */
        if (fd < 0 && errno != EPERM) return -1;
    }
    errno = EEXIST;
    return -1;
}

/* The candidate directory, open, if no other user can change what its path and the
   names we make in it lead to; its resolved path goes to `real` (PATH_MAX). */
static int open_candidate(const char *candidate, char *real, char *why, size_t cap) {
    if (!realpath(candidate, real)) return snprintf(why, cap, "%s", strerror(errno)), -1;
    int fd = open_stable(real, why, cap);
    struct stat st;
    if (fd >= 0 && fstat(fd, &st)) {
        snprintf(why, cap, "%s", strerror(errno));
        return close(fd), -1;
    }
    if (fd >= 0 && !entry_stays(&st, 1)) { /* the names we make are ours */
        say_why_not(&st, real, "entries", getuid(), why, cap);
        return close(fd), -1;
    }
    return fd;
}

int candidate_safe(const char *candidate, char *why, size_t cap) {
    char real[PATH_MAX];
    int fd = open_candidate(candidate, real, why, cap);
    return fd < 0 ? -1 : close(fd);
}

/* Room kept for "/spack-appimage-<uid>.<16 hex digits>" after the candidate. */
#define BASE_NAME_ROOM 48

/* Our directory beside the predictable name another user took: the keyed name of
   secret.c (the same at every launch: launches share it), or, when the user has no key
   or someone holds that name too, a fresh one of our own (safe, but not shared). */
static int fallback_dir(int parent, const char *real, const char *prefix, char *name,
                        size_t cap, int *created) {
    if (!fallback_name(real, prefix, name, cap)) {
        int fd = private_subdir(parent, name, created);
        if (fd >= 0 || errno != EPERM) return fd;
        say("%s/%s is taken too: using a new directory", real, name);
    } else {
        say("no safe place for a key (~/.cache/spack-appimage/secret): using a new directory");
    }
    *created = 1;
    return make_temp_dir(parent, prefix, name, cap);
}

/* -1 with the reason in `why` if the candidate `fd` is on a read-only file system, or a
   noexec one when `need_exec`. */
static int candidate_unusable(int fd, int need_exec, char *why, size_t cap) {
    struct statvfs sv;
    if (fstatvfs(fd, &sv)) return snprintf(why, cap, "statvfs: %s", strerror(errno)), -1;
    if (sv.f_flag & ST_RDONLY) return snprintf(why, cap, "mounted read-only"), -1;
    if (need_exec && (sv.f_flag & ST_NOEXEC)) return snprintf(why, cap, "mounted noexec"), -1;
    return 0;
}

int privdir_open(const char *candidate, size_t reserve, int need_exec, struct privdir *out,
                 char *why, size_t cap) {
    char real[PATH_MAX], prefix[40];
    int parent = open_candidate(candidate, real, why, cap);
    if (parent < 0) return -1;
    if (candidate_unusable(parent, need_exec, why, cap)) return close(parent), -1;
    if (strlen(real) + BASE_NAME_ROOM + reserve >= PATH_MAX) {
        snprintf(why, cap, "path too long");
        return close(parent), -1;
    }
    snprintf(prefix, sizeof prefix, "spack-appimage-%u", (unsigned)getuid());
    char name[64];
    snprintf(name, sizeof name, "%s", prefix);
    int created = 0, fd = private_subdir(parent, name, &created);
    if (fd < 0 && errno == EPERM) { /* taken: another owner, a symlink, open to others */
        say("%s/%s is not a private directory of ours: using another", real, name);
        fd = fallback_dir(parent, real, prefix, name, sizeof name, &created);
    }
    if (fd < 0) {
        snprintf(why, cap, "cannot make a private directory in it: %s", strerror(errno));
        return close(parent), -1;
    }
    out->fd = fd;
    out->parent = parent;
    out->created = created;
    snprintf(out->name, sizeof out->name, "%s", name);
    if (path_printf(out->path, sizeof out->path, "%s%s%s", real, strcmp(real, "/") ? "/" : "",
                    name)) {
        privdir_close(out, 1);
        return snprintf(why, cap, "path too long"), -1;
    }
    return 0;
}

void privdir_close(struct privdir *dir, int discard) {
    close(dir->fd);
    if (discard && dir->created) (void)unlinkat(dir->parent, dir->name, AT_REMOVEDIR);
    close(dir->parent);
    dir->fd = dir->parent = -1;
}

int candidates(const char *list[6]) {
    int n = 0;
    const char *env[] = {getenv("TMPDIR"), getenv("XDG_RUNTIME_DIR")};
    for (int i = 0; i < 2; i++)
        if (env[i] && *env[i]) list[n++] = env[i];
    list[n++] = "/tmp";
    list[n++] = "/var/tmp";
    list[n++] = "/dev/shm";
    return n;
}

int pick_base(size_t reserve, struct privdir *out) {
    const char *list[6];
    char why[PATH_MAX + 128];
    int n = candidates(list);
    for (int i = 0; i < n; i++) {
        if (!privdir_open(list[i], reserve, 0, out, why, sizeof why))
            return 0;
        say("skipping %s: %s", list[i], why);
    }
    return -1;
}

int open_lock_at(int dir, const char *name) {
    return openat(dir, name, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
}

int open_lock(const char *dir, const char *name) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    struct stat st;
    if (fd < 0) return -1;
    int lock = fstat(fd, &st) || !is_private(&st) ? (errno = EPERM, -1) : open_lock_at(fd, name);
    int error = errno;
    close(fd);
    errno = error;
    return lock;
}

int still_linked_at(int dir, const char *name, int fd) {
    struct stat opened, named;
    return !fstat(fd, &opened) && !fstatat(dir, name, &named, AT_SYMLINK_NOFOLLOW) &&
           opened.st_ino == named.st_ino && opened.st_dev == named.st_dev;
}

/* Unlinks what the directory `fd` holds, empty directories included; 1 with the name of
   a directory that is not empty in `sub`, 0 when `fd` is empty, -1 on another failure. */
static int clear_level(int fd, char sub[NAME_MAX + 1]) {
    int listing = openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = listing < 0 ? NULL : fdopendir(listing);
    if (!d) {
        if (listing >= 0) close(listing);
        return -1;
    }
    int rc = 0;
    struct dirent *e;
    while (rc == 0 && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        if (!unlinkat(fd, e->d_name, 0) || errno == ENOENT) continue;
        /* Linux's unlink of a directory fails with EISDIR */
        if (errno == EISDIR && (!unlinkat(fd, e->d_name, AT_REMOVEDIR) || errno == ENOENT))
            continue;
        rc = errno == ENOTEMPTY || errno == EEXIST ? 1 : -1;
        if (rc > 0) snprintf(sub, NAME_MAX + 1, "%s", e->d_name);
    }
    closedir(d);
    return rc;
}

/* Holds one descriptor whatever the depth (one per level would run out, EMFILE, in a
   deep tree and leave it half-removed): it goes down to a directory without a non-empty
   subdirectory, empties it, and climbs back through "..", which is where it came from
   since no other user can rename in our trees. Stops at the first entry it cannot
   remove (what stays makes the caller's cleanup try again later). */
int remove_tree_at(int dir, const char *name) {
    if (!unlinkat(dir, name, 0) || errno == ENOENT) return 0;
    if (errno != EISDIR) return -1;
    size_t depth = 0;
    char sub[NAME_MAX + 1];
    int found = -1, fd = openat(dir, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    while (fd >= 0) {
        found = clear_level(fd, sub);
        if (found < 0 || (found == 0 && depth == 0)) break;
        int next = found ? openat(fd, sub, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                         : openat(fd, "..", O_PATH | O_DIRECTORY | O_CLOEXEC);
        close(fd);
        fd = next;
        if (found) depth++;
        else depth--;
    }
    if (fd < 0) return -1;
    close(fd);
    return found ? -1 : unlinkat(dir, name, AT_REMOVEDIR);
}

/* A directory writable by its group is refused even when the group is the user's
   private one (hosts with user-private groups and umask 002 make directories 0775): the
   runtime cannot tell that nobody else is in that group (members listed in a directory
   service, other users with it as their primary group, and a static binary cannot ask
   NSS), so the notice names the mode and the one command that makes it usable. */
int owned_directory(const char *path, char *real, char *why, size_t cap) {
    struct stat st, opened;
    /* The name itself, not what it leads to: a symlink another user planted next to the
       image may point at a directory of ours, or at one they can change. */
    if (lstat(path, &st)) return snprintf(why, cap, "%s", strerror(errno)), -1;
    if (S_ISLNK(st.st_mode))
        return snprintf(why, cap, "a symbolic link, not a directory (use a real directory "
                        "of yours)"), -1;
    if (!S_ISDIR(st.st_mode)) return snprintf(why, cap, "not a directory"), -1;
    if (st.st_uid != getuid())
        return snprintf(why, cap, "owned by uid %u, not by you", (unsigned)st.st_uid), -1;
    if (st.st_mode & 022)
        return snprintf(why, cap, "writable by %s (mode %04o): run chmod go-w %s",
                        st.st_mode & 002 ? "others" : "its group",
                        (unsigned)(st.st_mode & 07777), path), -1;
    if (!realpath(path, real)) return snprintf(why, cap, "%s", strerror(errno)), -1;
    int fd = open_stable(real, why, cap);
    if (fd < 0) return -1;
    int same = !fstat(fd, &opened) && opened.st_ino == st.st_ino && opened.st_dev == st.st_dev;
    close(fd);
    return same ? 0 : (snprintf(why, cap, "it changed while checked"), -1);
}
