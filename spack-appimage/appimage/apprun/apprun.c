/*
 * AppRun for spack-appimage: runs one of the entries declared when the image was built.
 *
 * A compiled program rather than a shell script, so the host needs no shell and the
 * entry replaces this process (same PID, so signals and the exit status are the
 * entry's own). The entries are read from .appimage/entries next to this file:
 *
 *     entry <TAB> NAME <TAB> PATH [<TAB> INTERPRETER [<TAB> ARG]]
 *                                      (paths relative to the AppDir; a script entry
 *                                      runs as INTERPRETER [ARG] PATH ARGS...)
 *     default <TAB> NAME
 *     path <TAB> DIR                   (prepended to PATH, in order)
 *     glibc <TAB> X.Y                  (the newest GLIBC_X.Y the bundled files need)
 *     host <TAB> ENTRY <TAB> LIB <TAB> WHY   (a library ENTRY needs from the host)
 *     env <TAB> OP <TAB> NAME <TAB> VALUE <TAB> SEP
 *                                      (the bundled specs' run environment, applied in
 *                                      order before PATH; OP is set, unset, prepend or
 *                                      append; ${APPDIR} in VALUE is this AppDir)
 *     loader <TAB> DIR                 (a directory the host's loader searches by default
 *                                      on this architecture, in order)
 *     cpu, cpu-level                   (the CPU the image needs: cpu.h)
 *     store <TAB> PREFIX <TAB> DIR     (a bundled prefix shown at its store path: store.h)
 *
 * Before running an entry it checks, cheaply, what would otherwise fail inside the
 * loader or the program with a less helpful message: a CPU without flags the image's
 * builds need (cpu.c), a host glibc older than the image needs, and host
 * libraries the loader cannot find (LD_LIBRARY_PATH, /etc/ld.so.cache, the loader
 * directories). Then, for an image with store lines, it shows the bundled prefixes at
 * their store paths (store.h) and runs the entry in that view. The table has no size limit: its arrays are sized by its line count.
 *
 * Which entry runs:
 *   1. basename of $ARGV0 (set by the runtime), else of argv[0], names an entry:
 *      an image reached through a symlink named like an entry (ln -s x.app atom);
 *   2. the image has a single entry: it gets all arguments;
 *   3. argv[1] names an entry: it gets the arguments after that;
 *   4. there is a default entry: it gets all arguments;
 *   5. otherwise the entries are listed on stderr and the exit status is 2.
 * Only declared entries can run, never anything looked up in PATH.
 */
#define _GNU_SOURCE
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cpu.h"
#include "store.h"

struct entry {
    const char *name;
    const char *path;
    const char *interpreter; /* NULL unless a script run by a bundled interpreter */
    const char *interpreter_arg;
};

struct host_lib {
    const char *entry, *name, *why;
};

struct env_change {
    const char *op, *name, *value, *separator;
};

/* The table's lines by kind; each array has room for every line of the table. */
static struct entry *entries;
static int n_entries;
static const char **dirs, **loader_dirs;
static int n_dirs, n_loader_dirs;
static const char *default_entry;
static const char *glibc_needed;
static struct host_lib *host_libs;
static int n_host_libs;
static struct env_change *env_changes;
static int n_env_changes;
static struct cpu_table cpu;
static struct store_table store;

static const char *base_name(const char *path) {
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

static char *read_file(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return NULL;
    size_t size = 0, cap = 4096;
    char *buf = malloc(cap);
    size_t n;
    while (buf && (n = fread(buf + size, 1, cap - size - 1, f)) > 0) {
        size += n;
        if (cap - size - 1 > 0) continue;
        char *bigger = realloc(buf, cap *= 2);
        if (!bigger) free(buf);
        buf = bigger;
    }
    fclose(f);
    if (buf) buf[size] = '\0';
    return buf;
}

/* Splits the entries file in place. Returns 0 on success, -1 without entries or memory. */
static int parse(char *text) {
    size_t lines = 1;
    for (const char *c = text; *c; c++) lines += *c == '\n';
    entries = calloc(lines, sizeof *entries);
    dirs = calloc(lines, sizeof *dirs);
    loader_dirs = calloc(lines, sizeof *loader_dirs);
    host_libs = calloc(lines, sizeof *host_libs);
    env_changes = calloc(lines, sizeof *env_changes);
    if (!entries || !dirs || !loader_dirs || !host_libs || !env_changes) return -1;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        char *f[6] = {NULL};
        int n = table_fields(line, f, 6);
        const char *kind = f[0], *a = f[1], *b = f[2];
        if (n < 2) continue;
        if (!strcmp(kind, "entry") && b)
            entries[n_entries++] = (struct entry){a, b, f[3], f[4]};
        else if (!strcmp(kind, "default"))
            default_entry = a;
        else if (!strcmp(kind, "path"))
            dirs[n_dirs++] = a;
        else if (!strcmp(kind, "loader"))
            loader_dirs[n_loader_dirs++] = a;
        else if (!strcmp(kind, "glibc"))
            glibc_needed = a;
        else if (!strcmp(kind, "host") && n >= 4)
            host_libs[n_host_libs++] = (struct host_lib){a, b, f[3]};
        else if (!strcmp(kind, "env") && n >= 5)
            env_changes[n_env_changes++] = (struct env_change){a, b, f[3], f[4]};
        else if (cpu_table_add(&cpu, f, n) < 0 || store_table_add(&store, f, n) < 0)
            return -1;
    }
    return n_entries > 0 ? 0 : -1;
}

static const struct entry *find(const char *name) {
    for (int i = 0; i < n_entries; i++)
        if (!strcmp(entries[i].name, name)) return &entries[i];
    return NULL;
}

static int usage(const char *image, const char *unknown) {
    if (unknown)
        fprintf(stderr, "%s: '%s' is not an entry of this image\n", image, unknown);
    fprintf(stderr, "usage: %s ENTRY [ARGS...]\nentries:\n", image);
    for (int i = 0; i < n_entries; i++)
        fprintf(stderr, "  %s%s\n", entries[i].name,
                default_entry && !strcmp(default_entry, entries[i].name) ? " (default)" : "");
    return 2;
}

/* ------------------------------------------------------ what the host provides */

static const char *image_name = "AppRun";

static void *map_file(const char *path, size_t *size) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0) return NULL;
    void *data = fstat(fd, &st) || st.st_size == 0 ? MAP_FAILED
                 : mmap(NULL, st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (data == MAP_FAILED) return NULL;
    *size = st.st_size;
    return data;
}

/* The ld.so.cache flags of a library this process's loader would take, as glibc's
   _dl_cache_check_flags accepts them: 1 (any ELF), or the architecture's default ID
   (FLAG_ELF_LIBC6 with its 64-bit flag). A multilib cache also lists the other
   word size's library under the same name, with other flags. */
#if defined(__x86_64__)
#define CACHE_DEFAULT_ID 0x0303
#elif defined(__aarch64__)
#define CACHE_DEFAULT_ID 0x0a03
#elif defined(__powerpc64__)
#define CACHE_DEFAULT_ID 0x0503
#else /* an architecture whose ID is not listed here: every entry counts */
#define CACHE_DEFAULT_ID (-1)
#endif

/* glibc's /etc/ld.so.cache ("glibc-ld.so.cache1.1", possibly after the old format):
   the path of library `name` for this architecture, or NULL. */
static const char *ld_cache_lookup(const char *name) {
    static char *cache;
    static size_t size;
    static const char *strings;
    static uint32_t nlibs;
    static const unsigned char *cache_entries;
    static char found[PATH_MAX];
    if (!cache) {
        if (!(cache = map_file("/etc/ld.so.cache", &size))) return NULL;
        const char *magic = "glibc-ld.so.cache1.1";
        size_t start = 0;
        if (size > 16 && !memcmp(cache, "ld.so-1.7.0", 11)) {
            uint32_t old_n;
            memcpy(&old_n, cache + 12, 4);
            start = (16 + (size_t)old_n * 12 + 7) & ~(size_t)7;
        }
        if (start + 48 > size || memcmp(cache + start, magic, 20)) return NULL;
        memcpy(&nlibs, cache + start + 20, 4);
        strings = cache + start;
        cache_entries = (const unsigned char *)cache + start + 48;
        if (start + 48 + (size_t)nlibs * 24 > size) nlibs = 0;
    }
    for (uint32_t i = 0; i < nlibs; i++) {
        int32_t flags;
        uint32_t key, value;
        memcpy(&flags, cache_entries + i * 24, 4);
        memcpy(&key, cache_entries + i * 24 + 4, 4);
        memcpy(&value, cache_entries + i * 24 + 8, 4);
        if ((CACHE_DEFAULT_ID == -1 || flags == 1 || flags == CACHE_DEFAULT_ID) &&
            strings + key < cache + size &&
            !strcmp(strings + key, name) &&
            strings + value < cache + size) {
            snprintf(found, sizeof found, "%s", strings + value);
            return found;
        }
    }
    return NULL;
}

/* Where the host's loader would find `name`: LD_LIBRARY_PATH, the cache, the loader
   directories of the table. */
static const char *host_find(const char *name) {
    static char path[PATH_MAX];
    const char *env = getenv("LD_LIBRARY_PATH");
    if (env) {
        char *copy = strdup(env), *save = NULL;
        for (char *d = strtok_r(copy, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
            snprintf(path, sizeof path, "%s/%s", d, name);
            if (!access(path, R_OK)) return free(copy), path;
        }
        free(copy);
    }
    const char *cached = ld_cache_lookup(name);
    if (cached) return cached;
    for (int i = 0; i < n_loader_dirs; i++) {
        snprintf(path, sizeof path, "%s/%s", loader_dirs[i], name);
        if (!access(path, R_OK)) return path;
    }
    return NULL;
}

/* The newest GLIBC_x.y version that the libc.so.6 at `path` defines, as x*1000+y. */
static long glibc_version_of(const char *path) {
    size_t size;
    unsigned char *data = map_file(path, &size);
    long newest = -1;
    if (!data) return -1;
    Elf64_Ehdr *eh = (Elf64_Ehdr *)data;
    if (size < sizeof *eh || memcmp(data, ELFMAG, SELFMAG) || data[EI_CLASS] != ELFCLASS64 ||
        eh->e_shoff + (size_t)eh->e_shnum * sizeof(Elf64_Shdr) > size)
        goto done;
    Elf64_Shdr *sh = (Elf64_Shdr *)(data + eh->e_shoff);
    for (int i = 0; i < eh->e_shnum; i++) {
        if (sh[i].sh_type != SHT_GNU_verdef || sh[i].sh_link >= eh->e_shnum) continue;
        const char *strtab = (const char *)data + sh[sh[i].sh_link].sh_offset;
        size_t at = sh[i].sh_offset;
        for (unsigned n = 0; n < sh[i].sh_info && at + sizeof(Elf64_Verdef) <= size; n++) {
            Elf64_Verdef *vd = (Elf64_Verdef *)(data + at);
            Elf64_Verdaux *aux = (Elf64_Verdaux *)(data + at + vd->vd_aux);
            int major, minor;
            if (sscanf(strtab + aux->vda_name, "GLIBC_%d.%d", &major, &minor) == 2 &&
                major * 1000L + minor > newest)
                newest = major * 1000L + minor;
            if (!vd->vd_next) break;
            at += vd->vd_next;
        }
    }
done:
    munmap(data, size);
    return newest;
}

/* Exits with a message when the host cannot run `entry`. */
static void check_host(const char *entry) {
    int major, minor;
    if (glibc_needed && sscanf(glibc_needed, "%d.%d", &major, &minor) == 2) {
        const char *libc = host_find("libc.so.6");
        long have = libc ? glibc_version_of(libc) : -1;
        if (have >= 0 && have < major * 1000L + minor) {
            fprintf(stderr, "%s: needs glibc %s or newer, this host has %ld.%ld: build the "
                    "image on a system with a glibc as old as the oldest host\n",
                    image_name, glibc_needed, have / 1000, have % 1000);
            exit(127);
        }
    }
    for (int i = 0; i < n_host_libs; i++) {
        if (strcmp(host_libs[i].entry, entry) || host_find(host_libs[i].name)) continue;
        fprintf(stderr, "%s: %s needs %s (%s) from this host, and the loader cannot find it: "
                "load the module that provides it, or add its directory to LD_LIBRARY_PATH\n",
                image_name, entry, host_libs[i].name, host_libs[i].why);
        exit(127);
    }
}

/* ------------------------------------------------------ the run environment */

/* `value` with every ${APPDIR} replaced by `appdir` (malloc'd; NULL if out of memory). */
static char *with_appdir(const char *value, const char *appdir) {
    static const char token[] = "${APPDIR}";
    size_t count = 0, token_len = sizeof token - 1;
    for (const char *p = strstr(value, token); p; p = strstr(p + token_len, token)) count++;
    char *out = malloc(strlen(value) + count * strlen(appdir) + 1);
    if (!out) return NULL;
    char *o = out;
    for (const char *p = value, *hit; *p; p = hit + token_len) {
        if (!(hit = strstr(p, token))) {
            strcpy(o, p);
            return out;
        }
        memcpy(o, p, hit - p);
        o += hit - p;
        o = stpcpy(o, appdir);
    }
    *o = '\0';
    return out;
}

/* Applies the table's env lines in order; returns -1 if out of memory. */
static int apply_run_environment(const char *appdir) {
    for (int i = 0; i < n_env_changes; i++) {
        const struct env_change *c = &env_changes[i];
        if (!strcmp(c->op, "unset")) {
            unsetenv(c->name);
            continue;
        }
        char *value = with_appdir(c->value, appdir);
        if (!value) return -1;
        const char *old = getenv(c->name);
        int prepend = !strcmp(c->op, "prepend");
        if ((prepend || !strcmp(c->op, "append")) && old && *old) {
            char *joined = malloc(strlen(value) + strlen(c->separator) + strlen(old) + 1);
            if (!joined) return free(value), -1;
            sprintf(joined, "%s%s%s", prepend ? value : old, c->separator, prepend ? old : value);
            free(value);
            value = joined;
        }
        setenv(c->name, value, 1);
        free(value);
    }
    return 0;
}

int main(int argc, char **argv) {
    char self[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    if (len <= 0) {
        fprintf(stderr, "AppRun: cannot read /proc/self/exe: %s\n", strerror(errno));
        return 127;
    }
    self[len] = '\0';
    *strrchr(self, '/') = '\0'; /* the AppDir */

    char table[PATH_MAX + 32];
    snprintf(table, sizeof table, "%s/.appimage/entries", self);
    char *text = read_file(table);
    if (!text || parse(text) != 0) {
        fprintf(stderr, "AppRun: cannot read the entry table %s\n", table);
        return 127;
    }

    const char *appimage = getenv("APPIMAGE");
    if (appimage && *appimage) image_name = base_name(appimage);
    const char *argv0 = getenv("ARGV0");
    if (!argv0 || !*argv0) argv0 = argv[0] ? argv[0] : "AppRun";
    const char *image = base_name(argv0);

    const struct entry *chosen = find(image);
    int first = 1;
    if (!chosen && n_entries == 1) {
        chosen = &entries[0];
    } else if (!chosen && argc > 1 && (chosen = find(argv[1]))) {
        first = 2;
    } else if (!chosen && default_entry) {
        chosen = find(default_entry);
    }
    if (!chosen) return usage(image, argc > 1 ? argv[1] : NULL);
    cpu_check(&cpu, image_name);
    check_host(chosen->name);
    if (apply_run_environment(self) != 0) {
        fprintf(stderr, "AppRun: out of memory\n");
        return 127;
    }

    /* Bundled bin directories first, so that entries can call each other. */
    const char *old_path = getenv("PATH");
    size_t size = (old_path ? strlen(old_path) : 0) + 2;
    for (int i = 0; i < n_dirs; i++) size += strlen(self) + strlen(dirs[i]) + 2;
    char *path = malloc(size);
    if (!path) return 127;
    path[0] = '\0';
    for (int i = 0; i < n_dirs; i++) {
        strcat(path, self);
        strcat(path, "/");
        strcat(path, dirs[i]);
        strcat(path, ":");
    }
    if (old_path && *old_path)
        strcat(path, old_path);
    else if (n_dirs)
        path[strlen(path) - 1] = '\0';
    setenv("PATH", path, 1);

    /* A truncated path would name another file: refused. */
    char program[PATH_MAX * 2], script[PATH_MAX * 2];
    if (snprintf(script, sizeof script, "%s/%s", self, chosen->path) >= (int)sizeof script ||
        snprintf(program, sizeof program, "%s/%s", self,
                 chosen->interpreter ? chosen->interpreter : chosen->path) >= (int)sizeof program) {
        fprintf(stderr, "AppRun: the path of entry %s is too long\n", chosen->name);
        return 127;
    }
    char **args = calloc((size_t)argc + 4, sizeof *args);
    if (!args) return 127;
    int n = 0;
    if (chosen->interpreter) { /* the script's store shebang, pointed at the bundle */
        args[n++] = program;
        if (chosen->interpreter_arg) args[n++] = (char *)chosen->interpreter_arg;
        args[n++] = script;
    } else {
        args[n++] = (char *)chosen->name;
    }
    for (int i = first; i < argc; i++) args[n++] = argv[i];
    store_view(&store, self, image_name);
    execv(program, args);
    fprintf(stderr, "AppRun: cannot run %s: %s\n", program, strerror(errno));
    return 127;
}
