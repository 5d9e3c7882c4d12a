/*
 * Whether the squashfs is sound, checked once before squashfuse reads it, and what
 * identifies it as it is now.
 *
 * squashfuse 0.1.105 (Debian's) trusts every field it reads: a directory entry's name
 * size is copied into a 257-byte name buffer (a damaged one overwrote the traversal's
 * stack: the free() crash in sqfs_stack_destroy of issue 18), a fragment, id or export
 * index is not checked against its table's size (fixed in 0.6.2 and later), a damaged
 * table offset sends reads anywhere. Rather than re-checking each read of squashfuse,
 * the runtime checks, once per mount or extraction (never when joining a live mount or
 * reusing an extracted copy), CRC-32s recorded at build time in the ID section
 * (assemble.stamp_image_id: "<id> <unpacked bytes> <metadata CRC> <squashfs CRC>"):
 *
 *  - a mount, that the superblock and the metadata are the bytes mksquashfs wrote: the
 *    superblock and everything from the inode table to the squashfs's end, where
 *    mksquashfs writes all its tables (inodes, directories, fragments, export, ids,
 *    xattrs). About 1 MiB for a 220 MiB image of a Python installation: 0.4 ms. The
 *    data blocks are not read: their sizes and places are in the checked metadata, and a
 *    damaged one fails to decompress (gzip, xz: checksums; zstd: the frame's content
 *    size; lz4 has neither) or gives wrong bytes, which the app reads, not the server.
 *  - an extraction (and --appimage-extract, --appimage-manifest), which reads all the data
 *    anyway, that the whole squashfs is: damaged data is then refused in one line before
 *    anything is written, not found half-way. About 80 ms for that image.
 *
 * A CRC detects damage, not forgery: whoever can rewrite the image can put any program
 * in it anyway. An image without recorded CRCs (stamped by an older `spack appimage`, or
 * made by other tools and run with TARGET_APPIMAGE) gets the superblock's checks here,
 * and its structure is walked once squashfuse has opened it (walk.c).
 */
#define _GNU_SOURCE
#include <endian.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <squashfuse/squashfuse.h>

#include "runtime.h"

#define SUPERBLOCK_SIZE 96
#define NO_TABLE UINT64_MAX /* SQUASHFS_INVALID_BLK: the table is absent */

struct superblock {
    unsigned char raw[SUPERBLOCK_SIZE]; /* as in the file: what the CRCs cover */
    uint32_t magic, block_size;
    uint16_t compression, block_log, major, minor;
    uint64_t bytes_used, id_table, xattr_table, inode_table, directory_table,
        fragment_table, lookup_table;
};

static uint32_t le32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return le32toh(v); }
static uint16_t le16(const unsigned char *p) { uint16_t v; memcpy(&v, p, 2); return le16toh(v); }
static uint64_t le64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return le64toh(v); }

/* The superblock at `offset` (layout: squashfs_fs.h's struct squashfs_super_block). */
static int read_superblock(int fd, off_t offset, struct superblock *sb) {
    if (pread(fd, sb->raw, SUPERBLOCK_SIZE, offset) != SUPERBLOCK_SIZE) return -1;
    const unsigned char *r = sb->raw;
    sb->magic = le32(r), sb->block_size = le32(r + 12), sb->compression = le16(r + 20);
    sb->block_log = le16(r + 22);
    sb->major = le16(r + 28), sb->minor = le16(r + 30), sb->bytes_used = le64(r + 40);
    sb->id_table = le64(r + 48), sb->xattr_table = le64(r + 56);
    sb->inode_table = le64(r + 64), sb->directory_table = le64(r + 72);
    sb->fragment_table = le64(r + 80), sb->lookup_table = le64(r + 88);
    return 0;
}

static int within(uint64_t at, const struct superblock *sb) {
    return at >= sb->inode_table && at < sb->bytes_used;
}

/* Why the superblock cannot describe a squashfs of `size` bytes, or NULL. */
static const char *unsound(const struct superblock *sb, uint64_t size) {
    if (sb->magic != SQUASHFS_MAGIC || sb->major != 4 || sb->minor != 0)
        return "no squashfs 4.0 superblock";
    if (sb->compression < ZLIB_COMPRESSION || sb->compression > ZSTD_COMPRESSION)
        return "its compression is unknown"; /* a valid one this runtime lacks: sqfs_init */
    if (sb->block_log < 12 || sb->block_log > 20 || sb->block_size != 1u << sb->block_log)
        return "its block size is wrong";
    if (sb->bytes_used > size) return "it is shorter than its superblock says";
    if (sb->inode_table < SUPERBLOCK_SIZE || sb->directory_table < sb->inode_table ||
        !within(sb->directory_table, sb) || !within(sb->id_table, sb) ||
        (sb->fragment_table != NO_TABLE && !within(sb->fragment_table, sb)) ||
        (sb->lookup_table != NO_TABLE && !within(sb->lookup_table, sb)) ||
        (sb->xattr_table != NO_TABLE && !within(sb->xattr_table, sb)))
        return "its tables lie outside it";
    return NULL;
}

/* Adds bytes [from, to) of the squashfs at `offset` to *crc. */
static int add_crc(int fd, off_t offset, uint64_t from, uint64_t to, uLong *crc) {
    static unsigned char buf[1 << 16];
    while (from < to) {
        size_t n = to - from < sizeof buf ? to - from : sizeof buf;
        if (pread(fd, buf, n, offset + (off_t)from) != (ssize_t)n) return -1;
        *crc = crc32(*crc, buf, (uInt)n);
        from += n;
    }
    return 0;
}

/* Whether the CRC-32 of the superblock and of bytes [from, bytes_used) is `recorded`
   (8 hex digits); a reason why not, or NULL. */
static const char *crc_differs(int fd, off_t offset, const struct superblock *sb,
                               uint64_t from, const char *recorded, const char *what) {
    char now[16];
    uLong crc = crc32(crc32(0, Z_NULL, 0), sb->raw, SUPERBLOCK_SIZE);
    if (add_crc(fd, offset, from, sb->bytes_used, &crc)) return "it cannot be read";
    snprintf(now, sizeof now, "%08lx", crc);
    return strcmp(now, recorded) ? what : NULL;
}

int squashfs_check(int fd, off_t offset, const struct squashfs_crcs *crcs, int whole,
                   char *why, size_t cap) {
    struct superblock sb;
    struct stat st;
    const char *reason;
    if (fstat(fd, &st) || st.st_size < offset || read_superblock(fd, offset, &sb))
        reason = "it is truncated";
    else
        reason = unsound(&sb, (uint64_t)(st.st_size - offset));
    if (!reason && whole && crcs->squashfs[0])
        reason = crc_differs(fd, offset, &sb, SUPERBLOCK_SIZE, crcs->squashfs,
                             "its content differs from the checksum recorded when it was built");
    else if (!reason && crcs->metadata[0])
        reason = crc_differs(fd, offset, &sb, sb.inode_table, crcs->metadata,
                             "its metadata differs from the checksum recorded when it was built");
    if (reason) snprintf(why, cap, "%s", reason);
    return reason ? -1 : 0;
}

/* The tail of the squashfs (up to TAIL bytes before bytes_used) holds the indexes and
   last blocks of its tables: a squashfs whose body is garbage behind an intact superblock
   differs there. */
#define TAIL 4096

int squashfs_identity(int fd, off_t offset, char *out, size_t cap) {
    static unsigned char tail[TAIL];
    struct superblock sb;
    struct stat st;
    if (fstat(fd, &st) || read_superblock(fd, offset, &sb)) return -1;
    uLong crc = crc32(crc32(0, Z_NULL, 0), sb.raw, SUPERBLOCK_SIZE);
    uint64_t size = (uint64_t)(st.st_size - offset);
    uint64_t end = sb.bytes_used < size ? sb.bytes_used : size;
    uint64_t start = end > SUPERBLOCK_SIZE + TAIL ? end - TAIL : SUPERBLOCK_SIZE;
    ssize_t got = end > start ? pread(fd, tail, end - start, offset + (off_t)start) : 0;
    if (got > 0) crc = crc32(crc, tail, (uInt)got);
    return snprintf(out, cap, "%08lx%llx", crc, (unsigned long long)size) < (int)cap ? 0 : -1;
}
