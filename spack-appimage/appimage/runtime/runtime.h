/*
 * What the runtime's files (one concern each, compiled together: runtime.py) share:
 * the program's name and messages, and path formatting that refuses truncation.
 */
#ifndef SPACK_APPIMAGE_RUNTIME_H
#define SPACK_APPIMAGE_RUNTIME_H

#include <stddef.h>

#define EXIT_RUNTIME 127

/* The image's file name, for messages ("<prog>: <message>"). */
extern const char *prog;
/* VERBOSE is set: say() prints what the runtime decides. */
extern int verbose;

/* A runtime failure: "<prog>: <message>" on stderr, exit 127. */
void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
/* What the runtime decides, with VERBOSE set. */
void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Formats a path into out; -1 (errno ENAMETOOLONG, out empty) when it does not fit. */
int path_printf(char *out, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* ------------------------------------------ privdir.c: the per-user directory */

#include <limits.h>

/* A private directory of ours (0700) where mounts and extracted copies live, open as
   `fd`; `path` names it for what only takes paths (the app's APPDIR, the mount point),
   and no other user can make that path name anything else. */
struct privdir {
    int fd;
    int parent;            /* the candidate directory it is in */
    int created;           /* made by this process */
    char name[64];         /* its name in the candidate */
    char path[PATH_MAX];
};

/* Where to mount or extract, in order: $TMPDIR, $XDG_RUNTIME_DIR, /tmp, /var/tmp, /dev/shm. */
int candidates(const char *list[6]);
/* 0 if no other user can change what `candidate`'s path and the names made in it lead
   to (nothing is made); -1 with the reason in `why`. */
int candidate_safe(const char *candidate, char *why, size_t cap);
/* Our private directory in `candidate` (spack-appimage-<uid>, or one of ours beside it
   when another user holds that name: secret.c), leaving `reserve` bytes of PATH_MAX for
   what goes in it; -1 with the reason in `why` (nothing is made then) when the candidate
   is missing, unsafe, read-only, or noexec with `need_exec`. */
int privdir_open(const char *candidate, size_t reserve, int need_exec, struct privdir *out,
                 char *why, size_t cap);
/* Closes it; with `discard`, removes it too if this process made it and it is empty. */
void privdir_close(struct privdir *dir, int discard);
/* The first candidate where privdir_open succeeds (for mounts); -1 if none. */
int pick_base(size_t reserve, struct privdir *out);
/* The directory `name` in `parent`, made 0700 if missing (*created says so), open; -1
   with EPERM when it is not a directory of ours closed to others. */
int private_subdir(int parent, const char *name, int *created);
/* A new private directory "<prefix>.<random>" in `parent` (mkdtemp by descriptor); its
   name goes to `name`. */
int make_temp_dir(int parent, const char *prefix, char *name, size_t cap);
/* The lock file `name` in the directory `dir`, created 0600, never through a symlink. */
int open_lock_at(int dir, const char *name);
/* The same by path; the directory must be a private one of ours. */
int open_lock(const char *dir, const char *name);
/* Whether the open file `fd` is still the entry `name` of `dir`. */
int still_linked_at(int dir, const char *name, int fd);
/* The directory `path` (absolute, resolved) opened from / without following links
   (O_PATH), if no other user can rename or replace any of its components; -1 with the
   reason in `why`. */
int open_stable(const char *path, char *why, size_t cap);
/* Removes the entry `name` of `dir` and all below it, never following a link. */
int remove_tree_at(int dir, const char *name);
/* Whether `path` itself (not a symlink) is a directory owned by us, not writable by
   group or others, on a path no other user can change; its resolved path goes to `real`
   (PATH_MAX); -1 with the reason and the fix in `why`. */
int owned_directory(const char *path, char *real, char *why, size_t cap);

/* ----------------- secret.c: a fallback name only the user can know, without listing */

/* "<prefix>.<16 hex digits>": a keyed hash of our uid and `candidate` under a key of the
   user's own (made once, 0600, in ~/.cache/spack-appimage or $XDG_RUNTIME_DIR), the same
   at every launch; -1 when the user has no safe place for the key. */
int fallback_name(const char *candidate, const char *prefix, char *name, size_t cap);

/* ------------------------ verify.c: the squashfs is sound, and what identifies it */

#include <sys/types.h>

/* The CRC-32s recorded at build time (8 hex digits each, "" when absent): the third and
   fourth fields of the ID section, written by assemble.stamp_image_id. */
struct squashfs_crcs {
    char metadata[9]; /* the superblock, and the inode table to the squashfs's end */
    char squashfs[9]; /* the whole squashfs (to bytes_used) */
};
/* 0 if the squashfs at `offset` in `fd` is sound enough for squashfuse: a squashfs 4.0
   superblock whose tables lie inside the file, and the recorded CRCs: of the metadata,
   or with `whole` of everything (an extraction reads everything anyway); else -1 with
   the reason in `why`. Done once per mount or extraction, never per launch. */
int squashfs_check(int fd, off_t offset, const struct squashfs_crcs *crcs, int whole,
                   char *why, size_t cap);
/* What identifies the squashfs as it is now, for the cache and mount keys: a CRC-32 of
   its superblock and of the last 4 KiB of its tables, and its size, in hex (costs two
   small reads: done at every launch). */
int squashfs_identity(int fd, off_t offset, char *out, size_t cap);

/* ------------------- walk.c: the structure of a squashfs without recorded CRCs */

#include <squashfuse/squashfuse.h>

/* 0 if every directory, directory entry and inode of `fs` (opened by sqfs_init) holds
   only what squashfuse 0.1.105 can use safely: names, counts, offsets, table indexes;
   else -1 with the reason in `why`. For images without CRCs (squashfs_check does the
   rest): reads all the metadata, once per mount or extraction. */
int squashfs_walk(sqfs *fs, char *why, size_t cap);

/* ------------------------------------------------- extract.c: extraction */

#include <squashfuse/squashfuse.h>
#include <squashfuse/traverse.h>

/* Writes the content of the regular file `inode` to `fd`; -1 with errno on a failed
   write (ENOSPC...), EIO when the image cannot be read. */
int copy_file(sqfs *fs, sqfs_inode *inode, int fd);
/* What an extraction wrote (devices and fifos are not extracted). */
struct extracted {
    unsigned long files, dirs, links;
};
/* Extracts every path matching `pattern` (all if NULL) under the directory `rootfd`
   (named `root` in messages), counting what it wrote in `count`; -1 with the cause in
   `why`. */
int extract_tree(sqfs *fs, int rootfd, const char *root, const char *pattern,
                 struct extracted *count, char *why, size_t cap);

/* What extracting the whole image takes on a file system of `block`-byte blocks. */
struct needs {
    unsigned long long blocks, inodes;
    size_t longest;        /* the longest path in the image */
};
int extraction_needs(sqfs *fs, unsigned long block, struct needs *out);

/* An extracted copy in the cache: <private dir>/<image id>/root. */
struct extraction {
    struct privdir base;
    int dir, lock, users;  /* <base>/<id> and its lock files */
    int root;              /* the copy, once there (O_PATH) */
    char path[PATH_MAX], root_path[PATH_MAX];
};
enum { CACHE_EMPTY = 1, CACHE_READY = 2 };
/* Opens the image's cache directory in `candidate` with its lock held: CACHE_READY when
   the copy is there, CACHE_EMPTY when it must be filled; -1 with the reason in `why`
   (nothing is left then). */
int cache_join(const char *candidate, const char *id, struct extraction *ex, char *why,
               size_t cap);
/* Extracts the image into the empty cache: CACHE_READY, or -1 with the reason (the
   partial copy is gone; cache_abandon cleans the rest). */
int cache_fill(struct extraction *ex, sqfs *fs, const char *image, char *why, size_t cap);
/* Marks the copy used by this process (a shared lock, kept by the app) and lets others in. */
int cache_use(struct extraction *ex, char *why, size_t cap);
/* Gives up this candidate: removes what this process made of it that nobody uses. */
void cache_abandon(struct extraction *ex);
/* After the app: removes the copy if nobody else uses it (and NO_CLEANUP is not set),
   then the image's directory with its lock files. */
void cache_leave(struct extraction *ex);

/* ------------------------ unmount.c: how a mount goes away, whatever ends its server */

/* The setuid-root fusermount3 in PATH, which mounts and unmounts for users. */
int find_fusermount(char *out, size_t cap);
/* Whether a live FUSE mount is at `mnt`. */
int is_mounted(const char *mnt);
/* Unmounts `mnt`: 0, or -1 if it is busy (a process inside) or the unmount failed. */
int unmount_now(const char *mnt);
/* Detaches the mount at `mnt` if its server is gone ("Transport endpoint is not
   connected"). */
void clear_dead_mount(const char *mnt);
/* The lock file `name` of the directory `dirfd` (a mount's or an extracted copy's), if
   it is there: none is made, so a directory being removed is not filled again. */
int existing_lock(int dirfd, const char *name);
/* Removes the mount's directory: its mount point, lock files and itself. */
void remove_mount_dir(const char *dir);
/* After a failed mount, holding the mount lock and `users` shared: clears a dead mount
   left by a server that died after mounting, and removes the directory unless it is
   mounted or another launcher holds it. */
void abandon_mount(const char *dir, const char *mnt, int users);
/* Clears a dead mount at `mnt` and removes `dir` once no launcher or app holds its locks
   (it waits for them); leaves both to a newer server that mounted there. */
void remove_when_unused(const char *dir, const char *mnt);
/* Makes the calling process a server's guardian: returns 0 in a new child, which goes
   on to serve, with SIGCHLD at its default whatever the caller inherited; the caller
   stays in guard(), closes the server's descriptors (`ready`, the launcher's pipe, and
   `image`), ignores every signal it can, and when the server dies by a signal, cleans
   up after it (remove_when_unused); then exits. -1 if it cannot fork. */
int guard(const char *dir, const char *mnt, int ready, int image);
/* Calls stop(arg) in a thread of its own when TERM, INT or HUP first arrives (later
   ones stay pending: the server is leaving already); call it before starting other
   threads (they inherit the signals blocked). 0, or an error number. */
int stop_on_signals(void (*stop)(void *), void *arg);

#endif
