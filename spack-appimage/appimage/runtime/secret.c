/*
 * A name for the user's fallback directory that stays the same for the user and that
 * no other user can guess (privdir.c uses it where another user took the predictable
 * spack-appimage-<uid>).
 *
 * Why a keyed name rather than finding "one of ours" by listing the candidate: a sticky
 * scratch directory of mode 1733 cannot be listed, so every launch would make a new
 * directory that is never reused (no shared mount, no cached copy, one leaked directory
 * per launch); and listing costs O(entries) in a directory the squatter fills. The name
 * is spack-appimage-<uid>.<SipHash-2-4 of (uid, candidate path) under a key of the
 * user's>, found in O(1) and different in every candidate (seeing it in a listable /tmp
 * tells nothing of the one in a 1733 scratch directory).
 *
 * The key is 16 random bytes in a file of the user's own, 0600, in a directory only the
 * user can change: ~/.cache/spack-appimage/secret first (it survives logouts, so the
 * name does too), else $XDG_RUNTIME_DIR/spack-appimage-secret. Without either, the
 * caller falls back to a fresh random directory (mkdtemp), which is safe but not shared.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime.h"

#define KEY_BYTES 16

static uint64_t le64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))

static void sipround(uint64_t v[4]) {
    v[0] += v[1], v[1] = ROTL(v[1], 13), v[1] ^= v[0], v[0] = ROTL(v[0], 32);
    v[2] += v[3], v[3] = ROTL(v[3], 16), v[3] ^= v[2];
    v[0] += v[3], v[3] = ROTL(v[3], 21), v[3] ^= v[0];
    v[2] += v[1], v[1] = ROTL(v[1], 17), v[1] ^= v[2], v[2] = ROTL(v[2], 32);
}

/* SipHash-2-4 (Aumasson and Bernstein, the reference algorithm): a keyed hash made for
   short inputs, small enough to carry instead of linking a crypto library into a
   static runtime. */
static uint64_t siphash(const unsigned char key[KEY_BYTES], const unsigned char *in,
                        size_t len) {
    uint64_t k0 = le64(key), k1 = le64(key + 8);
    uint64_t v[4] = {k0 ^ 0x736f6d6570736575ULL, k1 ^ 0x646f72616e646f6dULL,
                     k0 ^ 0x6c7967656e657261ULL, k1 ^ 0x7465646279746573ULL};
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t m = le64(in + i);
        v[3] ^= m;
        sipround(v), sipround(v);
        v[0] ^= m;
    }
    uint64_t last = (uint64_t)len << 56;
    for (size_t j = 0; i + j < len; j++) last |= (uint64_t)in[i + j] << (8 * j);
    v[3] ^= last;
    sipround(v), sipround(v);
    v[0] ^= last;
    v[2] ^= 0xff;
    for (int r = 0; r < 4; r++) sipround(v);
    return v[0] ^ v[1] ^ v[2] ^ v[3];
}

/* Reads the key from `name` in `dir` (a regular file of ours, closed to others), making
   it first if missing: written under a random name and linked into place, so that of
   two launches making it at once, both end up with the one that won. */
static int read_or_make_key(int dir, const char *name, unsigned char key[KEY_BYTES]) {
    for (int attempt = 0; attempt < 2; attempt++) {
        int fd = openat(dir, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        if (fd >= 0) {
            struct stat st;
            int ok = !fstat(fd, &st) && S_ISREG(st.st_mode) && st.st_uid == getuid() &&
                     !(st.st_mode & 077) && read(fd, key, KEY_BYTES) == KEY_BYTES;
            close(fd);
            return ok ? 0 : -1;
        }
        unsigned char random[8];
        char tmp[64];
        if (errno != ENOENT || getrandom(random, sizeof random, 0) != sizeof random ||
            getrandom(key, KEY_BYTES, 0) != KEY_BYTES)
            return -1;
        snprintf(tmp, sizeof tmp, "%s.%016llx", name, (unsigned long long)le64(random));
        int w = openat(dir, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (w < 0) return -1;
        int written = write(w, key, KEY_BYTES) == KEY_BYTES;
        written = !close(w) && written;
        int linked = written && !linkat(dir, tmp, dir, name, 0);
        int error = errno;
        (void)unlinkat(dir, tmp, 0);
        if (linked) return 0;
        if (!written || error != EEXIST) return -1; /* EEXIST: another launch made it */
    }
    return -1;
}

/* The directory `name` in `dir`, made 0700 if missing, if it is ours and nobody else can
   write it (another user could rename what is in it); -1 otherwise. */
static int own_subdir(int dir, const char *name) {
    if (mkdirat(dir, name, 0700) && errno != EEXIST) return -1;
    int fd = openat(dir, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    struct stat st;
    if (fd >= 0 && (fstat(fd, &st) || st.st_uid != getuid() || (st.st_mode & 022)))
        return close(fd), -1;
    return fd;
}

/* `path` (from the environment) opened by open_stable, if it is ours and closed to
   writes by others (with `private`: closed to others altogether); -1 otherwise. */
static int own_dir(const char *path, int private) {
    char real[PATH_MAX], why[PATH_MAX + 128];
    struct stat st;
    if (!path || *path != '/' || !realpath(path, real)) return -1;
    int fd = open_stable(real, why, sizeof why);
    if (fd >= 0 && (fstat(fd, &st) || st.st_uid != getuid() ||
                    (st.st_mode & (private ? 077 : 022))))
        return close(fd), -1;
    return fd;
}

/* The user's key, read (or made) once per process; -1 if no place for it is safe. */
static int user_key(unsigned char key[KEY_BYTES]) {
    static unsigned char cached[KEY_BYTES];
    static int state = 0; /* 0: not looked for, 1: found, -1: none */
    if (state == 0) {
        int home = own_dir(getenv("HOME"), 0);
        int cache = home < 0 ? -1 : own_subdir(home, ".cache");
        int dir = cache < 0 ? -1 : own_subdir(cache, "spack-appimage");
        state = dir >= 0 && !read_or_make_key(dir, "secret", cached) ? 1 : -1;
        int fds[] = {dir, cache, home};
        for (int i = 0; i < 3; i++)
            if (fds[i] >= 0) close(fds[i]);
        int runtime = state < 0 ? own_dir(getenv("XDG_RUNTIME_DIR"), 1) : -1;
        if (runtime >= 0 && !read_or_make_key(runtime, "spack-appimage-secret", cached))
            state = 1;
        if (runtime >= 0) close(runtime);
    }
    if (state > 0) memcpy(key, cached, KEY_BYTES);
    return state > 0 ? 0 : -1;
}

int fallback_name(const char *candidate, const char *prefix, char *name, size_t cap) {
    unsigned char key[KEY_BYTES], in[PATH_MAX + 32];
    if (user_key(key)) return -1;
    int len = snprintf((char *)in, sizeof in, "%u:%s", (unsigned)getuid(), candidate);
    if (len < 0 || (size_t)len >= sizeof in) return -1;
    uint64_t hash = siphash(key, in, len);
    return path_printf(name, cap, "%s.%016llx", prefix, (unsigned long long)hash);
}
