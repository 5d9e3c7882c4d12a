/*
 * The store view: the image's bundled prefixes shown at their original store paths, in
 * a mount namespace of the image's own, for programs that compiled those paths in
 * (Perl's @INC, a code's data directory). The entry table lists them:
 *
 *     store <TAB> PREFIX <TAB> DIR       (a bundled spec's install prefix, as its files
 *                                         name it, and its AppDir-relative directory)
 *     store-root <TAB> ROOT              (the store the prefixes were installed in)
 *
 * An image without store lines never gets a namespace (the build wrote none: its
 * --store-view is never, or auto and no file names the store).
 *
 * store.c makes the mounts inside a namespace; userns.c makes the namespace, shared by
 * every process of the image on the node, or joins it.
 */
#ifndef SPACK_APPIMAGE_STORE_H
#define SPACK_APPIMAGE_STORE_H

#include <stddef.h>

struct store_mount {
    const char *prefix, *dir;
};
struct store_table {
    struct store_mount *mounts;
    int n;
    const char *root; /* NULL in a table without it */
};

/* Takes a table line split at tabs (`n` fields in `f`, kept, not copied) when it is a
   store or store-root line: 1; 0 for another kind; -1 out of memory. */
int store_table_add(struct store_table *table, char **f, int n);

/* Puts the reason in `why` (store.c and userns.c report so); returns -1. */
int store_fail(char *why, size_t cap, const char *format, ...)
    __attribute__((format(printf, 3, 4)));

/* store.c: whether this launch may run in the view (see store.c's top), checked by
   every launch before it makes or joins a namespace (in one, root's directories show
   as another owner's): 0, or -1 with the reason in `why`. `cwd` is the launch's
   working directory (NULL if unknown). */
int store_check(const struct store_table *table, const char *cwd, char *why, size_t cap);

/* store.c: whether a prefix has no directory on this node (a store directly under /),
   so that the view needs a new root, made in an empty directory. */
int store_needs_root(const struct store_table *table);

/* store.c: in a mount namespace of its own where the caller may mount (its user
   namespace's root, or real root), shows APPDIR/DIR at PREFIX for every line. A PREFIX
   that exists is covered by a bind mount; one that does not gets its missing
   directories in a tmpfs laid over its deepest existing ancestor, which mirrors that
   ancestor's entries with bind mounts and is then made read-only; where that ancestor
   is /, the tmpfs is made at `base` (an empty directory, needed then) and becomes the
   root. 0, or -1 with the reason in `why`. */
int store_mount_all(const struct store_table *table, const char *appdir, const char *base,
                    char *why, size_t cap);

/* userns.c: puts this process into the image's store view before the entry runs: joins
   the namespace another process of the same image (same runtime directory) made on
   this node, else makes one. Where that cannot be done (user namespaces disabled or
   refused, a prefix that cannot be shown), or APPIMAGE_STORE_VIEW=never, the entry runs
   without it, as a relocated image runs, and VERBOSE says why. */
void store_view(const struct store_table *table, const char *appdir, const char *image);

#endif
