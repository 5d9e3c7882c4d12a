/*
 * The CPU an image needs against the host's (cpu.h): Spack builds for the build host's
 * exact microarchitecture by default, and such an image started on an older or other CPU
 * dies with "Illegal instruction" deep inside a library. AppRun says so in one line
 * before anything of the image runs instead.
 *
 * Cost: nothing for an image without cpu lines (a generic build); otherwise the CPU's own
 * answer for each flag (cpuid.c: a few CPUID instructions on x86_64, no file), and only
 * for a flag it cannot answer (any on aarch64) reads of /proc/cpuinfo in small pieces up
 * to its first flags line, within the first processor block. The kernel formats that file
 * a processor at a time, as it is read (25-45 us for one on a 2-core VM), and a read that
 * asks for more than the first processor's text makes it format the next one too (20 us
 * more each, so a read to the end would cost a many-core node milliseconds); small reads
 * keep it at one processor whatever the node.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cpu.h"

/* How many missing flags AppRun's line names before "and N more". */
#define LISTED 6
/* Bytes per read of /proc/cpuinfo: less than one processor's text (about 1.4 KB on x86). */
#define PIECE 256

int table_fields(char *line, char **fields, int max) {
    int n = 0;
    while (line && n < max) {
        fields[n++] = line;
        if ((line = strchr(line, '\t'))) *line++ = '\0';
    }
    return n;
}

int cpu_table_add(struct cpu_table *table, char **f, int n) {
    if (n >= 4 && !strcmp(f[0], "cpu")) {
        struct cpu_need *more = realloc(table->needs, (table->n_needs + 1) * sizeof *more);
        if (!more) return -1;
        table->needs = more;
        table->needs[table->n_needs++] = (struct cpu_need){f[1], f[2], f[3]};
        return 1;
    }
    if (n >= 3 && !strcmp(f[0], "cpu-level")) {
        struct cpu_level *more = realloc(table->levels, (table->n_levels + 1) * sizeof *more);
        if (!more) return -1;
        table->levels = more;
        table->levels[table->n_levels++] = (struct cpu_level){f[1], f[2]};
        return 1;
    }
    return 0;
}

/* Whether `text` holds the whole line of `key` ("flags\t\t: fpu vme ...\n"). */
static int whole_line(const char *text, const char *key) {
    size_t n = strlen(key);
    for (const char *p = text; (p = strstr(p, key)); p += n)
        if ((p == text || p[-1] == '\n') && (p[n] == ' ' || p[n] == '\t' || p[n] == ':'))
            return strchr(p, '\n') != NULL;
    return 0;
}

/* /proc/cpuinfo up to the flags line of its first processor block, or to the blank line
   that ends the block (to its end where there is none), NUL-terminated; NULL if
   unreadable. */
static char *first_block(void) {
    int fd = open("/proc/cpuinfo", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return NULL;
    size_t size = 0, cap = 0;
    char *text = NULL, *end = NULL;
    while (!end) {
        if (cap - size < PIECE + 1) {
            char *bigger = realloc(text, cap = cap ? cap * 2 : 4 * PIECE);
            if (!bigger) break;
            text = bigger;
        }
        ssize_t got = read(fd, text + size, PIECE);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) break;
        size_t from = size ? size - 1 : 0; /* the blank line may start in the last read */
        text[size += got] = '\0';
        end = strstr(text + from, "\n\n");
        if (!end && (whole_line(text, "flags") || whole_line(text, "Features")))
            end = text + size - 1;
    }
    close(fd);
    if (!text || !size) return free(text), NULL;
    if (end) end[1] = '\0';
    return text;
}

static int by_name(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The space-separated `list` split in place into host->flags, sorted; -1 out of memory. */
static int take_flags(struct cpu_host *host, char *list) {
    host->flags = malloc((strlen(list) / 2 + 1) * sizeof *host->flags);
    if (!host->flags) return -1;
    for (char *save = NULL, *flag = strtok_r(list, " \t", &save); flag;
         flag = strtok_r(NULL, " \t", &save))
        host->flags[host->n_flags++] = flag;
    qsort(host->flags, host->n_flags, sizeof *host->flags, by_name);
    return 0;
}

/* The model and flags of /proc/cpuinfo's first block into `host`, once; host->flags
   stays NULL when the file is unreadable or lists no flags. */
static void read_cpuinfo(struct cpu_host *host) {
    if (host->read) return;
    host->read = 1;
    host->text = first_block();
    char *next, *flags = NULL;
    for (char *line = host->text; line && *line; line = next) {
        if ((next = strchr(line, '\n'))) *next++ = '\0';
        else next = line + strlen(line);
        char *colon = strchr(line, ':'), *key_end = colon;
        if (!colon) continue;
        while (key_end > line && (key_end[-1] == ' ' || key_end[-1] == '\t')) key_end--;
        *key_end = '\0';
        char *value = colon + 1 + strspn(colon + 1, " \t");
        if (!strcmp(line, "flags") || !strcmp(line, "Features")) flags = value;
        else if (!strcmp(line, "model name")) host->model = value;
    }
    if (!flags || take_flags(host, flags)) {
        free(host->text);
        free(host->flags);
        *host = (struct cpu_host){.read = 1};
    }
}

int cpu_host_read(struct cpu_host *host) {
    *host = (struct cpu_host){0};
    read_cpuinfo(host);
    return host->flags || cpuid_answers() ? 0 : -1;
}

void cpu_host_free(struct cpu_host *host) {
    free(host->text);
    free(host->flags);
    *host = (struct cpu_host){0};
}

/* Whether the host has the flag word[0..len): the CPU's answer where cpuid.c has one,
   else a binary search of /proc/cpuinfo's sorted flags, read at the first such flag; a
   flag that neither knows counts as present (a host is never refused on no data). */
static int has(struct cpu_host *host, const char *word, size_t len) {
    int answer = cpuid_has(word, len);
    if (answer >= 0) return answer;
    read_cpuinfo(host);
    if (!host->flags) return 1;
    for (int low = 0, high = host->n_flags - 1; low <= high;) {
        int mid = (low + high) / 2, order = strncmp(word, host->flags[mid], len);
        if (!order && host->flags[mid][len] == '\0') return 1;
        if (order < 0 || (!order && host->flags[mid][len])) high = mid - 1;
        else low = mid + 1;
    }
    return 0;
}

/* snprintf at the end of `out`, which stays NUL-terminated however long the text. */
static void append(char *out, size_t cap, const char *fmt, const char *s, int len) {
    size_t used = strlen(out);
    if (used + 1 < cap) snprintf(out + used, cap - used, fmt, len, s);
}

int cpu_missing(struct cpu_host *host, const char *needed, int listed, char *out,
                size_t cap) {
    int missing = 0;
    char more[32];
    if (cap) out[0] = '\0';
    for (const char *p = needed; *p;) {
        p += strspn(p, " ");
        size_t n = strcspn(p, " ");
        if (n && !has(host, p, n) && missing++ < listed)
            append(out, cap, missing > 1 ? ", %.*s" : "%.*s", p, (int)n);
        p += n;
    }
    if (missing > listed && cap) {
        snprintf(more, sizeof more, " and %d more", missing - listed);
        append(out, cap, "%.*s", more, (int)strlen(more));
    }
    return missing;
}

const char *cpu_level_of(const struct cpu_table *table, struct cpu_host *host) {
    const char *highest = NULL;
    for (int i = 0; i < table->n_levels; i++)
        if (!cpu_missing(host, table->levels[i].flags, 0, NULL, 0))
            highest = table->levels[i].name;
    return highest;
}

const char *cpu_family(void) {
#if defined(__x86_64__)
    return "x86_64";
#elif defined(__aarch64__)
    return "aarch64";
#elif defined(__powerpc64__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    return "ppc64le";
#elif defined(__powerpc64__)
    return "ppc64";
#else
    return "generic";
#endif
}

char *cpu_specs(const char *specs) {
    char *out = malloc(2 * strlen(specs) + 1), *o = out;
    if (!out) return NULL;
    for (const char *s = specs; *s; s++) {
        *o++ = *s;
        if (*s == ',') *o++ = ' ';
    }
    *o = '\0';
    return out;
}

void cpu_check(const struct cpu_table *table, const char *image) {
    const char *ignore = getenv("APPIMAGE_IGNORE_CPU");
    struct cpu_host host = {0}; /* /proc/cpuinfo unread: has() reads it if it must */
    if (!table->n_needs || (ignore && *ignore && strcmp(ignore, "0"))) return;
    for (int i = 0; i < table->n_needs; i++) {
        const struct cpu_need *need = &table->needs[i];
        char lacks[LISTED * 64 + 32];
        if (!cpu_missing(&host, need->flags, LISTED, lacks, sizeof lacks)) continue;
        const char *level = cpu_level_of(table, &host);
        char *specs = cpu_specs(need->specs);
        /* One write, so that the lines of simultaneous ranks do not interleave. */
        fprintf(stderr, "%s: this CPU lacks %s, which the image's %s build of %s needs; "
                "rebuild for a target this node has (e.g. target=%s), or set "
                "APPIMAGE_IGNORE_CPU=1 to run anyway\n", image, lacks, need->target,
                specs ? specs : need->specs, level ? level : cpu_family());
        exit(127);
    }
    cpu_host_free(&host);
}
