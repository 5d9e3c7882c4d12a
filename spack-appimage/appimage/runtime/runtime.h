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

#endif
