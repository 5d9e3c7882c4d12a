/*
 * Extraction: the squashfs written out as a tree under a directory descriptor, and the
 * per-user cache of extracted copies (<private dir>/<image id>/root).
 *
 * Every step is an *at call on descriptors of directories of ours, so nothing another
 * user renames or plants is followed. A candidate directory that cannot take the copy
 * (too little space counted in blocks, a write that fails, paths too long for the app
 * to use) is cleaned and the next one is tried; each failure says its real cause.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "runtime.h"

/* ------------------------------------------------------------ writing the tree */

int copy_file(sqfs *fs, sqfs_inode *inode, int fd) {
    static char buf[1 << 17];
    off_t size = inode->xtra.reg.file_size, pos = 0;
    while (pos < size) {
        sqfs_off_t n = size - pos < (off_t)sizeof buf ? size - pos : (off_t)sizeof buf;
        if (sqfs_read_range(fs, inode, pos, &n, buf) || n <= 0) {
            errno = EIO; /* the image's bytes cannot be read back */
            return -1;
        }
        /* A short write is retried: the next one says why (ENOSPC, EDQUOT). */
        for (sqfs_off_t done = 0; done < n;) {
            ssize_t w = write(fd, buf + done, n - done);
            if (w < 0) return -1;
            done += w;
        }
        pos += n;
    }
    return 0;
}

/* A new file (the caller unlinked the name): O_EXCL, so that in a ./squashfs-root others
   can write, a name planted after the unlink (a hard link to a file of ours) is refused
   rather than truncated and overwritten. */
static int write_file(sqfs *fs, sqfs_inode *inode, int dirfd, const char *name, mode_t mode) {
    int fd = openat(dirfd, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) return -1;
    if (copy_file(fs, inode, fd) || fchmod(fd, mode)) {
        int error = errno;
        close(fd);
        errno = error;
        return -1;
    }
    return close(fd); /* a network file system may report a full disk only here */
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
        int sub = mkdirat(dirfd, part, 0755) && errno != EEXIST ? -1
                  : openat(dirfd, part, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        int error = errno;
        close(dirfd);
        if (sub < 0) return errno = error, -1;
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
        int rc = fchmod(fd, mode | 0700), error = errno;
        close(fd);
        return errno = error, rc;
    }
    if (S_ISREG(inode->base.mode)) {
        if (unlinkat(dirfd, name, 0) && errno != ENOENT) return -1;
        return write_file(fs, inode, dirfd, name, mode);
    }
    if (S_ISLNK(inode->base.mode)) {
        char target[PATH_MAX];
        size_t size = sizeof target;
        if (sqfs_readlink(fs, inode, target, &size)) return errno = EIO, -1;
        if (unlinkat(dirfd, name, 0) && errno != ENOENT) return -1;
        return symlinkat(target, dirfd, name);
    }
    return 0; /* devices and fifos are not extracted */
}

/* Adds the entry of `mode`, just extracted, to `count`. */
static void count_entry(struct extracted *count, mode_t mode) {
    if (S_ISREG(mode)) count->files++;
    else if (S_ISDIR(mode)) count->dirs++;
    else if (S_ISLNK(mode)) count->links++;
}

/* Extracts one entry of the traversal, counted in `count`; -1 with the cause in `why`. */
static int extract_one(sqfs *fs, sqfs_traverse *trv, int rootfd, const char *root,
                       struct extracted *count, char *why, size_t cap) {
    char path[PATH_MAX];
    const char *leaf;
    sqfs_inode inode;
    if (sqfs_inode_get(fs, &inode, sqfs_dentry_inode(&trv->entry)))
        return snprintf(why, cap, "the squashfs is damaged (at %s)", trv->path), -1;
    int dirfd = path_printf(path, sizeof path, "%s", trv->path) ? -1
                : open_parent(rootfd, path, &leaf);
    int rc = dirfd < 0 ? -1 : extract_entry(fs, &inode, dirfd, leaf), error = errno;
    if (dirfd >= 0) close(dirfd);
    if (rc) snprintf(why, cap, "cannot extract %s into %s: %s", trv->path, root, strerror(error));
    else count_entry(count, inode.base.mode);
    return rc;
}

int extract_tree(sqfs *fs, int rootfd, const char *root, const char *pattern,
                 struct extracted *count, char *why, size_t cap) {
    sqfs_traverse trv;
    if (sqfs_traverse_open(&trv, fs, sqfs_inode_root(fs)))
        return snprintf(why, cap, "the squashfs is damaged (its root directory)"), -1;
    sqfs_err err = SQFS_OK;
    int rc = 0;
    *count = (struct extracted){0, 0, 0};
    while (rc == 0 && sqfs_traverse_next(&trv, &err)) {
        if (trv.dir_end) continue;
        if (pattern && fnmatch(pattern, trv.path, FNM_PATHNAME | FNM_LEADING_DIR)) continue;
        rc = extract_one(fs, &trv, rootfd, root, count, why, cap);
        if (verbose && rc == 0) fprintf(stderr, "%s\n", trv.path);
    }
    if (err && rc == 0) {
        snprintf(why, cap, "the squashfs is damaged");
        rc = -1;
    }
    sqfs_traverse_close(&trv);
    return rc;
}

/* Symlinks at least this long take a block of their own (ext4 keeps shorter ones in
   the inode, tmpfs in memory). */
#define INLINE_SYMLINK 60

int extraction_needs(sqfs *fs, unsigned long block, struct needs *out) {
    sqfs_traverse trv;
    sqfs_err err = SQFS_OK;
    *out = (struct needs){1, 1, 0}; /* the root directory */
    if (sqfs_traverse_open(&trv, fs, sqfs_inode_root(fs))) return -1;
    int rc = 0;
    while (rc == 0 && sqfs_traverse_next(&trv, &err)) {
        sqfs_inode inode;
        if (trv.dir_end) continue;
        if (sqfs_inode_get(fs, &inode, sqfs_dentry_inode(&trv.entry))) {
            rc = -1;
            break;
        }
        out->inodes++;
        if (strlen(trv.path) > out->longest) out->longest = strlen(trv.path);
        if (S_ISREG(inode.base.mode))
            out->blocks += (inode.xtra.reg.file_size + block - 1) / block;
        else if (S_ISDIR(inode.base.mode) ||
                 (S_ISLNK(inode.base.mode) && inode.xtra.symlink_size >= INLINE_SYMLINK))
            out->blocks++;
    }
    sqfs_traverse_close(&trv);
    return rc || err ? -1 : 0;
}

/* ------------------------------------------------------- the extraction cache */

/* Removes what an interrupted extraction or cleanup left (the lock is held). */
static void remove_stale(int dir) {
    int listing = openat(dir, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = listing < 0 ? NULL : fdopendir(listing);
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (!strncmp(e->d_name, "tmp.", 4) || !strcmp(e->d_name, "root.old"))
            (void)remove_tree_at(dir, e->d_name); /* what stays goes next time */
    if (d) closedir(d);
    else if (listing >= 0) close(listing);
}

/* The image's directory in the private directory, its locks open, the lock held and
   all three still linked where they were opened: the last process to leave removes them
   (drop_image_dir) while holding the lock, so one that opened them before that and got
   the lock after, or that found the directory gone (ENOENT) while making its locks,
   starts over. */
static int lock_image_dir(struct extraction *ex, const char *id, char *why, size_t cap) {
    for (int attempt = 0; attempt < 100; attempt++) {
        ex->dir = private_subdir(ex->base.fd, id, NULL);
        if (ex->dir < 0) return snprintf(why, cap, "cannot make %s: %s", ex->path, strerror(errno)), -1;
        ex->lock = open_lock_at(ex->dir, "lock");
        ex->users = ex->lock < 0 ? -1 : open_lock_at(ex->dir, "users");
        int locked = ex->users >= 0 && !flock(ex->lock, LOCK_EX);
        if (!locked && errno != ENOENT) {
            snprintf(why, cap, "cannot make the locks in %s: %s", ex->path, strerror(errno));
            return -1;
        }
        if (locked && still_linked_at(ex->base.fd, id, ex->dir) &&
            still_linked_at(ex->dir, "lock", ex->lock) &&
            still_linked_at(ex->dir, "users", ex->users))
            return 0;
        if (ex->users >= 0) close(ex->users);
        if (ex->lock >= 0) close(ex->lock);
        close(ex->dir);
        ex->dir = ex->lock = ex->users = -1;
    }
    return snprintf(why, cap, "%s keeps being removed", ex->path), -1;
}

/* Removes the image's directory and its two lock files (and AppRun's store-view files,
   apprun/userns.c, whose holder may not have removed them yet), unless it holds a copy: the
   caller holds "lock" exclusively and "users" with nobody else, so every other process
   that opened them waits for the lock and then sees they are gone (lock_image_dir). The
   lock files go first: a launcher that opened the directory meanwhile makes new ones,
   and the rmdir then fails and leaves the directory to it (as does anything an
   interrupted extraction left that remove_stale could not remove). */
static void drop_image_dir(int base, const char *id, int dir) {
    struct stat st;
    if (!fstatat(dir, "root", &st, AT_SYMLINK_NOFOLLOW) || errno != ENOENT) return;
    (void)unlinkat(dir, "users", 0);
    (void)unlinkat(dir, "lock", 0);
    (void)unlinkat(dir, "ns", 0);
    (void)unlinkat(dir, "ns.users", 0);
    (void)unlinkat(dir, "view", AT_REMOVEDIR);
    (void)unlinkat(base, id, AT_REMOVEDIR);
}

int cache_join(const char *candidate, const char *id, struct extraction *ex, char *why,
               size_t cap) {
    *ex = (struct extraction){.dir = -1, .lock = -1, .users = -1, .root = -1,
                              .base = {.fd = -1, .parent = -1}};
    if (privdir_open(candidate, strlen(id) + sizeof "/root/", 1, &ex->base, why, cap)) return -1;
    if (path_printf(ex->path, sizeof ex->path, "%s/%s", ex->base.path, id) ||
        path_printf(ex->root_path, sizeof ex->root_path, "%s/root", ex->path)) {
        privdir_close(&ex->base, 1);
        return snprintf(why, cap, "path too long"), -1;
    }
    if (lock_image_dir(ex, id, why, cap)) return cache_abandon(ex), -1;
    remove_stale(ex->dir);
    ex->root = openat(ex->dir, "root", O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    return ex->root >= 0 ? CACHE_READY : CACHE_EMPTY;
}

/* -1 with the reason when the copy does not fit in the directory's file system or its
   paths would be too long for the app to use. */
static int check_room(struct extraction *ex, sqfs *fs, char *why, size_t cap) {
    struct statvfs sv;
    struct needs needs;
    if (fstatvfs(ex->dir, &sv)) return snprintf(why, cap, "statvfs: %s", strerror(errno)), -1;
    unsigned long block = sv.f_frsize ? sv.f_frsize : sv.f_bsize;
    if (extraction_needs(fs, block, &needs)) return snprintf(why, cap, "the squashfs is damaged"), -1;
    if (strlen(ex->root_path) + 1 + needs.longest >= PATH_MAX)
        return snprintf(why, cap, "path too long for the image's files (%zu bytes under it)",
                        needs.longest), -1;
    if (needs.blocks > sv.f_bavail)
        return snprintf(why, cap, "%.1f MiB needed, %.1f MiB free",
                        (double)needs.blocks * block / (1 << 20),
                        (double)sv.f_bavail * block / (1 << 20)), -1;
    if (sv.f_files && needs.inodes > sv.f_favail)
        return snprintf(why, cap, "%llu inodes needed, %llu free", needs.inodes,
                        (unsigned long long)sv.f_favail), -1;
    return 0;
}

int cache_fill(struct extraction *ex, sqfs *fs, const char *image, char *why, size_t cap) {
    if (check_room(ex, fs, why, cap)) return -1;
    char tmp[64];
    int tmpfd = make_temp_dir(ex->dir, "tmp", tmp, sizeof tmp);
    if (tmpfd < 0) return snprintf(why, cap, "cannot make a directory in %s: %s", ex->path, strerror(errno)), -1;
    say("extracting %s to %s", image, ex->root_path);
    struct extracted count;
    int rc = extract_tree(fs, tmpfd, ex->root_path, NULL, &count, why, cap);
    close(tmpfd);
    if (rc == 0 && renameat(ex->dir, tmp, ex->dir, "root")) {
        snprintf(why, cap, "cannot rename into %s: %s", ex->root_path, strerror(errno));
        rc = -1;
    }
    if (rc) return remove_tree_at(ex->dir, tmp), -1;
    ex->root = openat(ex->dir, "root", O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (ex->root < 0) return snprintf(why, cap, "cannot open %s: %s", ex->root_path, strerror(errno)), -1;
    return CACHE_READY;
}

int cache_use(struct extraction *ex, char *why, size_t cap) {
    if (flock(ex->users, LOCK_SH)) return snprintf(why, cap, "cannot lock %s: %s", ex->path, strerror(errno)), -1;
    close(ex->lock);
    ex->lock = -1;
    return 0;
}

/* The image's ID: the last component of its directory's path. */
static const char *image_id(const struct extraction *ex) {
    return strrchr(ex->path, '/') + 1;
}

void cache_abandon(struct extraction *ex) {
    /* Nobody else in it and no copy: its locks and itself go, and the private directory
       if this process made it. */
    if (ex->lock >= 0 && ex->root < 0 && !flock(ex->users, LOCK_EX | LOCK_NB)) {
        remove_stale(ex->dir);
        drop_image_dir(ex->base.fd, image_id(ex), ex->dir);
    }
    int fds[] = {ex->root, ex->users, ex->lock, ex->dir};
    for (int i = 0; i < 4; i++)
        if (fds[i] >= 0) close(fds[i]);
    if (ex->base.fd >= 0) privdir_close(&ex->base, 1);
    ex->root = ex->users = ex->lock = ex->dir = -1;
}

void cache_leave(struct extraction *ex) {
    close(ex->users);
    ex->users = -1;
    if (getenv("NO_CLEANUP")) return;
    int lock = existing_lock(ex->dir, "lock"), users = existing_lock(ex->dir, "users");
    /* Without the lock the tree stays, for the next run to reuse or remove; once the
       lock is held, the files must still be the directory's (another process that left
       may have removed them, and a launcher made new ones: that launcher's now). */
    if (lock >= 0 && users >= 0 && !flock(lock, LOCK_EX) &&
        still_linked_at(ex->base.fd, image_id(ex), ex->dir) &&
        still_linked_at(ex->dir, "lock", lock) && still_linked_at(ex->dir, "users", users) &&
        !flock(users, LOCK_EX | LOCK_NB)) {
        remove_stale(ex->dir);
        if (!renameat(ex->dir, "root", ex->dir, "root.old"))
            (void)remove_tree_at(ex->dir, "root.old"); /* what stays goes at the next remove_stale */
        drop_image_dir(ex->base.fd, image_id(ex), ex->dir);
    }
    if (users >= 0) close(users);
    if (lock >= 0) close(lock);
}
