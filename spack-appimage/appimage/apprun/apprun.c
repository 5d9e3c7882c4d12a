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
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_ENTRIES 1024
#define MAX_DIRS 1024

struct entry {
    const char *name;
    const char *path;
    const char *interpreter; /* NULL unless a script run by a bundled interpreter */
    const char *interpreter_arg;
};

static struct entry entries[MAX_ENTRIES];
static int n_entries;
static const char *dirs[MAX_DIRS];
static int n_dirs;
static const char *default_entry;

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
        if (cap - size - 1 == 0) buf = realloc(buf, cap *= 2);
    }
    fclose(f);
    if (buf) buf[size] = '\0';
    return buf;
}

/* Splits a line at tabs in place into at most `max` fields; returns how many. */
static int split(char *line, char **fields, int max) {
    int n = 0;
    while (line && n < max) {
        fields[n++] = line;
        if ((line = strchr(line, '\t'))) *line++ = '\0';
    }
    return n;
}

/* Splits the entries file in place. Returns 0 on success. */
static int parse(char *text) {
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        char *f[5] = {NULL};
        int n = split(line, f, 5);
        const char *kind = f[0], *a = f[1], *b = f[2];
        if (n < 2) continue;
        if (!strcmp(kind, "entry") && b && n_entries < MAX_ENTRIES)
            entries[n_entries++] = (struct entry){a, b, f[3], f[4]};
        else if (!strcmp(kind, "default"))
            default_entry = a;
        else if (!strcmp(kind, "path") && n_dirs < MAX_DIRS)
            dirs[n_dirs++] = a;
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

    char program[PATH_MAX * 2], script[PATH_MAX * 2];
    snprintf(program, sizeof program, "%s/%s", self, chosen->path);
    char **args = calloc((size_t)argc + 4, sizeof *args);
    if (!args) return 127;
    int n = 0;
    if (chosen->interpreter) { /* the script's store shebang, pointed at the bundle */
        snprintf(script, sizeof script, "%s", program);
        snprintf(program, sizeof program, "%s/%s", self, chosen->interpreter);
        args[n++] = program;
        if (chosen->interpreter_arg) args[n++] = (char *)chosen->interpreter_arg;
        args[n++] = script;
    } else {
        args[n++] = (char *)chosen->name;
    }
    for (int i = first; i < argc; i++) args[n++] = argv[i];
    execv(program, args);
    fprintf(stderr, "AppRun: cannot run %s: %s\n", program, strerror(errno));
    return 127;
}
