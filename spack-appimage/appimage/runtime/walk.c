/*
 * The structure of a squashfs that has no CRCs recorded at build time (verify.c), walked
 * once before squashfuse serves or extracts it, with the checks squashfuse 0.1.105
 * leaves out: an image stamped by an older `spack appimage` (its ID section holds only
 * "<id> <unpacked bytes>"), or made by other tools and run with TARGET_APPIMAGE.
 *
 * The walk reads through squashfuse itself (sqfs_inode_get, sqfs_dir_next, the tables),
 * so its decompressors and caches are reused, and checks beforehand what squashfuse
 * would use unchecked:
 *  - a metadata cursor's offset inside its block: sqfs_md_read computes
 *    `block->size - offset` unsigned, and an inode reference or a directory's offset
 *    past a block's end copies from beyond it;
 *  - a directory entry's name at most SQUASHFS_NAME_LEN bytes (sqfs_dir_next copies
 *    size + 1 bytes into a sqfs_name of 257: the crash of issue 18), and a directory
 *    index's name the same (sqfs_dir_lookup); no '/', ".", "..": an extraction joins
 *    names into paths;
 *  - headers of at most 256 entries that end within the directory's size;
 *  - the fragment, id, xattr and export (inode number) indexes against their tables'
 *    sizes (sqfs_table_get indexes its block list without a check), and a file's tail
 *    inside its fragment block's buffer;
 *  - every directory once (a loop would never end), nested at most PATH_MAX / 2 deep.
 * It reads all the metadata: 33-53 ms for a 228 MiB squashfs of 60,270 files (zstd,
 * 1.1 MiB of metadata) on a busy 2-core machine, once per mount or extraction.
 * Not checked: whether a data block decompresses to as many bytes as a read into its
 * middle assumes (sqfs_read_range; that needs the data), and the keys and values in the
 * xattr table (images of `spack appimage` have none: mksquashfs -no-xattrs).
 */
#define _GNU_SOURCE
#include <endian.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <squashfuse/squashfuse.h>

#include "runtime.h"

/* Entries under one directory header at most (the kernel's SQUASHFS_DIR_COUNT). */
#define DIR_COUNT 256

struct walk {
    sqfs *fs;
    unsigned char *seen;                     /* directories visited, by inode number */
    char name[UINT16_MAX + 2];               /* room for any name size the format holds */
};

/* Whether a cursor starts inside its metadata block (the block is read and cached by
   squashfuse, which the reads after this one use). */
static int cursor_inside(sqfs *fs, const sqfs_md_cursor *cur) {
    sqfs_off_t pos = cur->block;
    sqfs_block *block;
    return !sqfs_md_cache(fs, &pos, &block) && cur->offset < block->size;
}

/* A regular file's tail in its fragment block: sqfs_read_range copies it from the block's
   buffer, which holds the block size (compressed) or the stored size (not). */
static const char *fragment_problem(sqfs *fs, const sqfs_inode *inode) {
    struct squashfs_fragment_entry frag;
    uint32_t index = inode->xtra.reg.frag_idx, size;
    bool compressed;
    if (index == SQUASHFS_INVALID_FRAG) return NULL;
    if (index >= fs->sb.fragments || sqfs_frag_entry(fs, &frag, index))
        return "a file's fragment is not in the fragment table";
    sqfs_data_header(frag.size, &compressed, &size);
    uint64_t end = (uint64_t)inode->xtra.reg.frag_off +
                   inode->xtra.reg.file_size % fs->sb.block_size;
    return end > (compressed ? fs->sb.block_size : size)
               ? "a file's tail lies outside its fragment" : NULL;
}

/* The inode `id` into *inode, and what is wrong with it, or NULL. */
static const char *inode_problem(sqfs *fs, sqfs_inode_id id, sqfs_inode *inode) {
    sqfs_md_cursor cur;
    sqfs_md_cursor_inode(&cur, id, fs->sb.inode_table_start);
    if (!cursor_inside(fs, &cur) || sqfs_inode_get(fs, inode, id))
        return "an inode cannot be read";
    if (inode->base.uid >= fs->sb.no_ids || inode->base.guid >= fs->sb.no_ids)
        return "an inode's owner is not in the id table";
    if (inode->base.inode_number == 0 || inode->base.inode_number > fs->sb.inodes)
        return "an inode's number is out of range";
    if (inode->xattr != SQUASHFS_INVALID_XATTR && inode->xattr >= fs->xattr_info.xattr_ids)
        return "an inode's extended attributes are not in their table";
    if (S_ISLNK(inode->base.mode) && inode->xtra.symlink_size >= PATH_MAX)
        return "a symbolic link is too long";
    return S_ISREG(inode->base.mode) ? fragment_problem(fs, inode) : NULL;
}

/* The index of a large directory (sqfs_dir_lookup fast-forwards with it): each name fits
   a sqfs_name, each place is inside the directory table. */
static const char *index_problem(sqfs *fs, const sqfs_inode *dir) {
    sqfs_md_cursor cur = dir->next; /* the index follows the inode */
    for (uint32_t i = 0; i < dir->xtra.dir.idx_count; i++) {
        struct squashfs_dir_index index;
        if (sqfs_md_read(fs, &cur, &index, sizeof index)) return "a directory index cannot be read";
        uint32_t size = le32toh(index.size), at = le32toh(index.index);
        if (size >= SQUASHFS_NAME_LEN || sqfs_md_read(fs, &cur, NULL, size + 1))
            return "a directory index holds a name that is too long";
        sqfs_md_cursor entries = {
            fs->sb.directory_table_start + le32toh(index.start_block),
            (dir->xtra.dir.offset + at) % SQUASHFS_METADATA_SIZE};
        if (at > dir->xtra.dir.dir_size || !cursor_inside(fs, &entries))
            return "a directory index points outside its directory";
    }
    return NULL;
}

static int bad_name(const char *name, size_t size) {
    return size > SQUASHFS_NAME_LEN || memchr(name, '/', size) || memchr(name, '\0', size) ||
           (size == 1 && name[0] == '.') || (size == 2 && !memcmp(name, "..", 2));
}

/* What is wrong in the directory `dir`, its entries' inodes and its subdirectories. */
static const char *dir_problem(struct walk *w, sqfs_inode *dir, int depth) {
    sqfs *fs = w->fs;
    uint32_t number = dir->base.inode_number; /* in range: inode_problem */
    if (depth > PATH_MAX / 2) return "its directories nest too deep";
    if (w->seen[number / 8] & (1u << number % 8)) return "a directory is listed twice";
    w->seen[number / 8] |= 1u << number % 8;
    if (dir->xtra.dir.parent_inode == 0 || dir->xtra.dir.parent_inode > fs->sb.inodes + 1)
        return "a directory's parent is out of range";
    const char *why = index_problem(fs, dir);
    sqfs_dir d;
    sqfs_dir_entry entry;
    sqfs_err err = SQFS_OK;
    if (why) return why;
    if (sqfs_dir_open(fs, dir, &d, 0) || (d.total && !cursor_inside(fs, &d.cur)))
        return "a directory lies outside the directory table";
    sqfs_dentry_init(&entry, w->name);
    while (sqfs_dir_next(fs, &d, &entry, &err)) {
        sqfs_inode child;
        if (bad_name(w->name, sqfs_dentry_name_size(&entry)))
            return "a directory holds an impossible name";
        if (d.header.count >= DIR_COUNT || d.offset > d.total)
            return "a directory's entries run past it";
        if ((why = inode_problem(fs, sqfs_dentry_inode(&entry), &child))) return why;
        if (child.base.inode_number != sqfs_dentry_inode_num(&entry) ||
            (child.base.mode & S_IFMT) != (sqfs_dentry_mode(&entry) & S_IFMT))
            return "a directory entry does not match its inode";
        if (S_ISDIR(child.base.mode) && (why = dir_problem(w, &child, depth + 1))) return why;
    }
    return err ? "a directory cannot be read" : NULL;
}

int squashfs_walk(sqfs *fs, char *why, size_t cap) {
    struct walk *w = malloc(sizeof *w);
    sqfs_inode root;
    const char *problem = "it is too large to check";
    if (w && (w->seen = calloc(fs->sb.inodes / 8 + 1, 1))) {
        w->fs = fs;
        problem = inode_problem(fs, sqfs_inode_root(fs), &root);
        if (!problem)
            problem = S_ISDIR(root.base.mode) ? dir_problem(w, &root, 0)
                                              : "its root is not a directory";
        free(w->seen);
    }
    free(w);
    if (problem) snprintf(why, cap, "%s", problem);
    return problem ? -1 : 0;
}
