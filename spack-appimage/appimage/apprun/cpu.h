/*
 * cpu.c: the CPU an image needs (the entry table's cpu and cpu-level lines, written by
 * apprun.write_table) against the host's. One copy for both programs that use it:
 * AppRun refuses a host that lacks a needed flag before anything of the image runs, and
 * the runtime's --appimage-doctor shows the same comparison (runtime.py compiles this
 * file and cpuid.c, the CPU's own answers, into the runtime too), both reading the table
 * with its line splitter.
 */
#ifndef SPACK_APPIMAGE_CPU_H
#define SPACK_APPIMAGE_CPU_H

#include <stddef.h>

/*     cpu <TAB> TARGET <TAB> SPECS <TAB> FLAGS      (a target the bundled specs were built
                                                     for, beyond the family's generic base;
                                                     SPECS comma-separated "name@version")
       cpu-level <TAB> NAME <TAB> FLAGS              (the family's generic levels, lowest
                                                     first)
   FLAGS are space-separated, spelled as the kernel's /proc/cpuinfo spells them. */
struct cpu_need {
    const char *target, *specs, *flags;
};
struct cpu_level {
    const char *name, *flags;
};
struct cpu_table {
    struct cpu_need *needs;
    int n_needs;
    struct cpu_level *levels;
    int n_levels;
};

/* Splits a table line at tabs in place into at most `max` fields; returns how many. */
int table_fields(char *line, char **fields, int max);
/* Takes a table line split at tabs (`n` fields in `f`, kept, not copied) when it is a
   cpu or cpu-level line: 1; 0 for another kind; -1 out of memory. */
int cpu_table_add(struct cpu_table *table, char **f, int n);

/* The host's CPU: the CPU's own answers (cpuid.c) and the first processor block of
   /proc/cpuinfo, read only for what those cannot answer. A zeroed struct is a host whose
   /proc/cpuinfo is still unread. */
struct cpu_host {
    int read;          /* whether /proc/cpuinfo was read (the fields below) */
    char *text;        /* that block; the fields point into it */
    const char *model; /* "model name", NULL where the kernel gives none */
    char **flags;      /* "flags" on x86, "Features" on aarch64, sorted: a table's
                          hundred flags are each found in a few steps; NULL when the
                          file is unreadable or lists none */
    int n_flags;
};
/* Reads /proc/cpuinfo (the doctor names the model). 0, or -1 when nothing is known of the
   flags: the file is unreadable or lists none, and the CPU cannot be asked. */
int cpu_host_read(struct cpu_host *host);
void cpu_host_free(struct cpu_host *host);

/* How many flags of `needed` the host lacks; the first `listed` of them go to `out`
   joined with ", ", followed by " and N more" when there are more. A flag neither the
   CPU nor /proc/cpuinfo answers for is not counted. */
int cpu_missing(struct cpu_host *host, const char *needed, int listed, char *out,
                size_t cap);
/* The highest of the table's generic levels whose flags the host has, or NULL. */
const char *cpu_level_of(const struct cpu_table *table, struct cpu_host *host);

/* cpuid.c: whether this CPU has the kernel flag word[0..len) as /proc/cpuinfo would say,
   asked of the CPU itself (x86_64: CPUID, and XCR0 for state the OS must enable), which
   costs no file read: 1 or 0; -1 for a flag it has no answer for (not in its table, or
   not x86_64), which the caller reads /proc/cpuinfo for. */
int cpuid_has(const char *word, size_t len);
/* 1 where cpuid_has answers for some flags (x86_64), else 0. */
int cpuid_answers(void);
/* A cpu line's SPECS as messages list them: "a@1,b@2" as "a@1, b@2" (malloc'd; NULL if
   out of memory). */
char *cpu_specs(const char *specs);
/* The family's base target, which every CPU of the family runs ("x86_64"). */
const char *cpu_family(void);

/* AppRun's check: when the host lacks flags of a cpu line, one line naming `image`, the
   missing flags, the build that needs them, a target to rebuild for and the override,
   then exit 127. Nothing is read without a cpu line, nor with APPIMAGE_IGNORE_CPU=1, and
   a host whose flags are unknown is never refused. */
void cpu_check(const struct cpu_table *table, const char *image);

#endif
