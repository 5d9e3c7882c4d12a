/*
 * The mounts of the store view (store.h): each bundled prefix shown at its store path.
 *
 * Where the prefix exists (the build machine, a node that shares its store, or another
 * store at the same path) it is covered by a bind mount of the image's directory. Where
 * it does not (the common case on other machines) its missing directories cannot be
 * made on the host, so, as guix pack -RR does for /gnu/store, the deepest ancestor that
 * exists gets a tmpfs laid over it that mirrors its entries (a bind mount per directory
 * or file, a copy per symlink) and holds the missing directories down to the prefix;
 * then that tmpfs is made read-only, so a program that creates a file right in that
 * ancestor gets EROFS instead of writing into memory that vanishes with the namespace.
 * Everything else of the host stays as it is: home, scratch, /tmp, /proc, /dev, the
 * host's MPI and GPU driver.
 *
 * Where no directory of a prefix exists on the node (a store directly under /), the
 * ancestor is / itself, which cannot be covered: a tmpfs mirroring / is made in an empty
 * directory the caller gives and becomes the namespace's root (pivot_root), as guix pack
 * -RR's root; the old root is detached.
 *
 * Refused (the image then runs as relocated): outside the store's root, an ancestor that
 * programs write into
 * (owned by someone but root, writable by group or others like /tmp, the caller's home
 * or working directory) or that autofs mounts on demand: made read-only and frozen as it
 * was, it would break them. Creating the store's root on the node makes that ancestor
 * the root itself, where only Spack writes.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/magic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "store.h"

/* Puts the reason in `why`; returns -1. */
int store_fail(char *why, size_t cap, const char *format, ...) {
    va_list args;
    va_start(args, format);
    vsnprintf(why, cap, format, args);
    va_end(args);
    return -1;
}

int store_table_add(struct store_table *table, char **f, int n) {
    if (n >= 2 && !strcmp(f[0], "store-root")) {
        table->root = f[1];
        return 1;
    }
    if (n < 3 || strcmp(f[0], "store")) return 0;
    struct store_mount *more = realloc(table->mounts, (table->n + 1) * sizeof *more);
    if (!more) return -1;
    table->mounts = more;
    table->mounts[table->n++] = (struct store_mount){f[1], f[2]};
    return 1;
}

/* The deepest existing directory that is `path` or one of its ancestors, into `out`. */
static void deepest_existing(const char *path, char *out, size_t cap) {
    struct stat st;
    snprintf(out, cap, "%s", path);
    while (strcmp(out, "/") && stat(out, &st)) {
        char *slash = strrchr(out, '/');
        if (slash == out) slash[1] = '\0';
        else *slash = '\0';
    }
}

/* Whether `a` and `b` name the same directory. */
static int same_directory(const char *a, const char *b) {
    struct stat x, y;
    return a && b && !stat(a, &x) && !stat(b, &y) && x.st_dev == y.st_dev && x.st_ino == y.st_ino;
}

/* Why `dir`, outside the store's root, must not be frozen by a mirror (see the top), or
   NULL when it may be. */
static const char *written_into(const char *dir, const char *cwd) {
    struct stat st;
    struct statfs fs;
    if (stat(dir, &st) || statfs(dir, &fs)) return "it cannot be read";
    if (fs.f_type == AUTOFS_SUPER_MAGIC) return "autofs mounts its entries on demand";
    if (same_directory(dir, getenv("HOME"))) return "it is your home";
    if (same_directory(dir, cwd)) return "it is the working directory";
    if (st.st_uid != 0 || st.st_mode & 022) return "programs write into it";
    return NULL;
}

/* Whether `dir` is the store's root or inside it. */
static int in_store(const char *dir, const char *root) {
    size_t n = root ? strlen(root) : 0;
    return n && !strncmp(dir, root, n) && (dir[n] == '/' || dir[n] == '\0');
}

/* The directories from below `top` down to `path` (inclusive), made in the tmpfs. */
static int make_path(const char *top, const char *path, char *why, size_t cap) {
    char partial[PATH_MAX];
    size_t start = strlen(top) + (strcmp(top, "/") ? 1 : 0);
    if (start >= strlen(path)) return 0; /* path is top: nothing to make */
    for (const char *c = path + start;; c++) {
        if (*c != '/' && *c) continue;
        snprintf(partial, sizeof partial, "%.*s", (int)(c - path), path);
        if (mkdir(partial, 0755) && errno != EEXIST)
            return store_fail(why, cap, "mkdir %s: %s", partial, strerror(errno));
        if (!*c) return 0;
    }
}

/* Lays a tmpfs over `onto` that shows the entries of `dir` as they are (see the top):
   `onto` is `dir` itself, or the empty directory where a new root is made. */
static int mirror(const char *dir, const char *onto, char *why, size_t cap) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    struct stat st;
    DIR *listing = fd < 0 ? NULL : fdopendir(dup(fd));
    if (!listing || fstat(fd, &st)) {
        snprintf(why, cap, "cannot read %s: %s", dir, strerror(errno));
        if (listing) closedir(listing);
        if (fd >= 0) close(fd);
        return -1;
    }
    char options[64];
    snprintf(options, sizeof options, "mode=%o,size=1m", st.st_mode & 07777);
    if (mount("tmpfs", onto, "tmpfs", MS_NOSUID | MS_NODEV, options)) {
        snprintf(why, cap, "cannot mount a tmpfs on %s: %s", onto, strerror(errno));
        closedir(listing), close(fd);
        return -1;
    }
    int rc = 0;
    for (struct dirent *e; !rc && (e = readdir(listing));) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char source[64 + NAME_MAX], target[PATH_MAX], link[PATH_MAX];
        struct stat entry;
        snprintf(source, sizeof source, "/proc/self/fd/%d/%s", fd, e->d_name);
        if (snprintf(target, sizeof target, "%s/%s", onto, e->d_name) >= (int)sizeof target ||
            fstatat(fd, e->d_name, &entry, AT_SYMLINK_NOFOLLOW))
            continue; /* gone meanwhile, or a name too long to show: left out */
        if (S_ISLNK(entry.st_mode)) {
            ssize_t len = readlinkat(fd, e->d_name, link, sizeof link - 1);
            if (len < 0) continue;
            link[len] = '\0';
            rc = symlink(link, target);
        } else {
            int made = S_ISDIR(entry.st_mode) ? mkdir(target, 0755)
                                              : mknod(target, S_IFREG | 0644, 0);
            rc = made ? made : mount(source, target, NULL, MS_BIND | MS_REC, NULL);
        }
        if (rc && errno == ENOENT) rc = 0; /* removed meanwhile: left out (an empty name) */
        if (rc) snprintf(why, cap, "cannot show %s in the view of %s: %s", e->d_name, dir,
                         strerror(errno));
    }
    closedir(listing);
    close(fd);
    return rc;
}

/* Each prefix's deepest existing ancestor (calloc'd, one per line; NULL without memory). */
static char (*ancestors(const struct store_table *table))[PATH_MAX] {
    char (*tops)[PATH_MAX] = calloc(table->n ? table->n : 1, sizeof *tops);
    for (int i = 0; tops && i < table->n; i++)
        deepest_existing(table->mounts[i].prefix, tops[i], sizeof tops[i]);
    return tops;
}

int store_needs_root(const struct store_table *table) {
    char (*tops)[PATH_MAX] = ancestors(table);
    int needs = 0;
    for (int i = 0; tops && i < table->n; i++) needs |= !strcmp(tops[i], "/");
    free(tops);
    return needs;
}

/* Makes the namespace's root a tmpfs at `base` (an empty directory) that mirrors / and
   holds the directories of the prefixes with no directory on the node (`tops` "/"),
   with pivot_root; the old root is detached. */
static int new_root(const struct store_table *table, char (*tops)[PATH_MAX], const char *base,
                    char *why, size_t cap) {
    if (mirror("/", base, why, cap)) return -1;
    for (int i = 0; i < table->n; i++) {
        char path[PATH_MAX];
        if (strcmp(tops[i], "/")) continue;
        if (snprintf(path, sizeof path, "%s%s", base, table->mounts[i].prefix) >=
                (int)sizeof path)
            return store_fail(why, cap, "the path of %s is too long", table->mounts[i].prefix);
        if (make_path(base, path, why, cap)) return -1;
    }
    if (chdir(base) || mkdir(".old-root", 0700) || syscall(SYS_pivot_root, ".", ".old-root") ||
        chdir("/") || umount2("/.old-root", MNT_DETACH) || rmdir("/.old-root"))
        return store_fail(why, cap, "cannot make the view's root: %s", strerror(errno));
    return 0;
}

int store_check(const struct store_table *table, const char *cwd, char *why, size_t cap) {
    char (*tops)[PATH_MAX] = ancestors(table);
    const char *unsafe;
    int rc = tops ? 0 : store_fail(why, cap, "out of memory");
    for (int i = 0; !rc && i < table->n; i++) {
        const char *prefix = table->mounts[i].prefix, *root = table->root;
        if (strcmp(tops[i], "/") && strcmp(tops[i], prefix) && !in_store(tops[i], root) &&
                 (unsafe = written_into(tops[i], cwd)))
            rc = store_fail(why, cap, "the store %s is not on this node, and showing it would "
                            "make %s read-only (%s): create the store's directory (mkdir -p "
                            "%s) to get the view", root ? root : prefix, tops[i], unsafe,
                            root ? root : prefix);
    }
    free(tops);
    return rc;
}

int store_mount_all(const struct store_table *table, const char *appdir, const char *base,
                    char *why, size_t cap) {
    char (*tops)[PATH_MAX] = ancestors(table); /* before any mount changes the view */
    if (!tops) return store_fail(why, cap, "out of memory");
    int rc = 0;
    if (store_needs_root(table)) { /* first: the other prefixes are then shown in it */
        rc = base ? new_root(table, tops, base, why, cap)
                  : store_fail(why, cap, "no directory of the store %s exists on this node",
                               table->root ? table->root : table->mounts[0].prefix);
        if (!rc && mount(NULL, "/", NULL, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL))
            rc = store_fail(why, cap, "cannot make the view's root read-only: %s",
                            strerror(errno));
        free(tops);
        if (rc || !(tops = ancestors(table))) /* the new directories exist now */
            return rc ? rc : store_fail(why, cap, "out of memory");
    }
    /* Shallower ancestors first: a deeper one is reached through the mirror's bind. */
    for (size_t depth = 1; !rc && depth < PATH_MAX; depth++) {
        int any = 0;
        for (int i = 0; !rc && i < table->n; i++) {
            const char *top = tops[i];
            size_t len = strlen(top);
            any |= len >= depth;
            if (len != depth || !strcmp(top, table->mounts[i].prefix)) continue;
            int first = 1; /* the first line with this ancestor to mirror mirrors it */
            for (int j = 0; j < i; j++)
                first &= strcmp(tops[j], top) || !strcmp(tops[j], table->mounts[j].prefix);
            if (first) {
                rc = mirror(top, top, why, cap);
                for (int j = i; !rc && j < table->n; j++)
                    if (!strcmp(tops[j], top))
                        rc = make_path(top, table->mounts[j].prefix, why, cap);
                if (!rc && mount(NULL, top, NULL, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV,
                                 NULL))
                    rc = store_fail(why, cap, "cannot make the view of %s read-only: %s", top,
                                  strerror(errno));
            }
        }
        if (!any) break;
    }
    for (int i = 0; !rc && i < table->n; i++) {
        char source[PATH_MAX];
        if (snprintf(source, sizeof source, "%s/%s", appdir, table->mounts[i].dir) >=
                (int)sizeof source)
            rc = store_fail(why, cap, "the path of %s is too long", table->mounts[i].dir);
        else if (mount(source, table->mounts[i].prefix, NULL, MS_BIND | MS_REC, NULL))
            rc = store_fail(why, cap, "cannot show %s at %s: %s", source,
                          table->mounts[i].prefix, strerror(errno));
    }
    free(tops);
    return rc;
}
