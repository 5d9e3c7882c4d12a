/*
 * How a shared mount goes away, whatever ends its server, so that no dead mount
 * ("Transport endpoint is not connected") and no directory of it stays:
 *
 *  - idle: the server's watcher unmounts and removes the mount's directory
 *    (runtime.c: watch_users);
 *  - TERM, INT or HUP to the server: it leaves as soon as no app holds the mount, as
 *    if its idle time were 0 (stop_on_signals; runtime.c: stop): the watcher unmounts,
 *    not lazily, and removes the directory. Never a lazy detach while apps run: it takes
 *    the path away, and an app's TERM handler that reads a file or imports a module by
 *    $APPDIR/... would get ENOENT, as would a launch about to exec AppRun;
 *  - KILL, a crash, any other death by a signal: the server's guardian (its parent,
 *    which only SIGKILL ends) clears the dead mount and removes the directory once no
 *    app holds it (guard). libfuse's auto_unmount does this only for root: fusermount3's
 *    helper checks a dead mount by opening it, which fails with EACCES instead of
 *    ENOTCONN for anyone but the owner when the mount has no allow_other, so a user's
 *    dead mount stayed;
 *  - server and guardian both killed (a job's cgroup): the dead mount stays until the
 *    next launch of the image clears it (runtime.c: join_mount); nothing is left to
 *    notice it sooner. A failed mount removes what it made (abandon_mount).
 *
 * Every step that changes the mount point or removes the directory holds the mount's
 * "lock" file, as launchers do while they check and mount; the directory goes only when
 * nobody holds its "users" file (launchers and apps hold it shared).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include "runtime.h"

#define FUSE_SUPER_MAGIC 0x65735546

/* The setuid-root fusermount3 in PATH that libfuse 3 runs to mount when not root
   (libfuse 3 does not run fuse2's plain `fusermount`), and that unmounts for users. */
int find_fusermount(char *out, size_t cap) {
    const char *path = getenv("PATH");
    struct stat st;
    char *copy = path ? strdup(path) : NULL, *save = NULL;
    if (!copy) return -1;
    for (char *d = strtok_r(copy, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
        if (!path_printf(out, cap, "%s/fusermount3", d) && !stat(out, &st) && st.st_uid == 0 && (st.st_mode & S_ISUID)) {
            free(copy);
            return 0;
        }
    }
    free(copy);
    return -1;
}

/* Runs `fusermount3 -u [-z] mnt`, quietly; 0 if it unmounted. */
static int fusermount_unmount(const char *mnt, int lazy) {
    char fusermount[PATH_MAX];
    if (find_fusermount(fusermount, sizeof fusermount)) return -1;
    pid_t pid = fork();
    if (pid == 0) {
        int null = open("/dev/null", O_RDWR);
        if (null < 0 || dup2(null, 1) < 0 || dup2(null, 2) < 0) _exit(1);
        execl(fusermount, fusermount, lazy ? "-uqz" : "-uq", "--", mnt, (char *)NULL);
        _exit(1);
    }
    int status;
    if (pid < 0) return -1;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) return -1;
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

int unmount_now(const char *mnt) {
    return getuid() == 0 ? umount2(mnt, 0) : fusermount_unmount(mnt, 0);
}

/* Detaches the mount at `mnt` lazily: only for a dead mount, whose files nobody can
   read any more (a lazy detach of a live one takes its paths from the apps inside). */
static void detach_mount(const char *mnt) {
    if (getuid() == 0 && !umount2(mnt, MNT_DETACH)) return;
    (void)fusermount_unmount(mnt, 1);
}

int is_mounted(const char *mnt) {
    struct statfs sf;
    struct stat here, parent;
    char up[PATH_MAX + 4];
    return !path_printf(up, sizeof up, "%s/..", mnt) && !statfs(mnt, &sf) &&
           (unsigned)sf.f_type == FUSE_SUPER_MAGIC && !stat(mnt, &here) &&
           !stat(up, &parent) && here.st_dev != parent.st_dev;
}

void clear_dead_mount(const char *mnt) {
    struct statfs sf;
    if (statfs(mnt, &sf) && errno == ENOTCONN) detach_mount(mnt); /* ENOTCONN: no server */
}

void remove_mount_dir(const char *dir) {
    /* with AppRun's store-view files (apprun/userns.c), whose holder may still be leaving;
       the directories first */
    const char *names[] = {"mnt", "view", "users", "lock", "ns", "ns.users"};
    char path[PATH_MAX];
    for (int i = 0; i < 6; i++) {
        if (path_printf(path, sizeof path, "%s/%s", dir, names[i])) return;
        if (i < 2) (void)rmdir(path); else (void)unlink(path); /* gone already: fine */
    }
    (void)rmdir(dir); /* a launcher may have recreated a file in it: it stays */
}

void abandon_mount(const char *dir, const char *mnt, int users) {
    clear_dead_mount(mnt); /* the server died after mounting */
    if (!is_mounted(mnt) && !flock(users, LOCK_EX | LOCK_NB)) remove_mount_dir(dir);
}

int existing_lock(int dirfd, const char *name) {
    return openat(dirfd, name, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
}

/* One look, holding the mount lock: clears a dead mount, then removes the directory if
   nobody uses it. 1 when there is nothing more to do (removed, gone already, or mounted
   again: the newer server cleans up), 0 when an app still holds "users" (*users is then
   open on it, for the caller to wait on). */
static int clean_once(const char *dir, const char *mnt, int *users) {
    int dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dirfd < 0) return 1;
    int lock = existing_lock(dirfd, "lock");
    *users = existing_lock(dirfd, "users");
    int done = 1;
    if (lock >= 0 && *users >= 0) {
        while (flock(lock, LOCK_EX) && errno == EINTR) continue;
        if (!still_linked_at(dirfd, "lock", lock) || !still_linked_at(dirfd, "users", *users)) {
            done = 0; /* replaced while we waited: look again */
            close(*users);
            *users = -1;
        } else {
            clear_dead_mount(mnt);
            if (is_mounted(mnt)) {
                /* a newer server's */
            } else if (!flock(*users, LOCK_EX | LOCK_NB)) {
                remove_mount_dir(dir);
            } else {
                done = 0; /* an app of the dead mount still runs */
            }
        }
    }
    if (lock >= 0) close(lock); /* releases the mount lock */
    if (done && *users >= 0) close(*users);
    close(dirfd);
    return done;
}

void remove_when_unused(const char *dir, const char *mnt) {
    int users;
    while (!clean_once(dir, mnt, &users)) {
        if (users < 0) continue;
        /* Sleeps in the kernel until the last app has let go, holding no mount lock
           (launchers take "users" before "lock"). */
        while (flock(users, LOCK_EX) && errno == EINTR) continue;
        close(users);
    }
}

int guard(const char *dir, const char *mnt, int ready, int image) {
    sigset_t all, none;
    sigfillset(&all);
    sigemptyset(&none);
    /* Blocked across fork: nothing may end the guardian before it ignores signals. */
    sigprocmask(SIG_BLOCK, &all, NULL);
    /* Not an ignored SIGCHLD inherited from the launcher's caller: the kernel would reap
       the server itself, and the guardian, left without its status, could not clean up;
       the server inherits the default too, or its unmounts' waitpid would fail. */
    signal(SIGCHLD, SIG_DFL);
    pid_t server = fork();
    if (server <= 0) {
        sigprocmask(SIG_SETMASK, &none, NULL);
        return server < 0 ? -1 : 0;
    }
    close(ready); /* so the launcher reads end-of-file if the server dies before "R" */
    close(image); /* the server's: a guardian keeps no file open */
    /* A signal to the whole session (a job's end, `kill -- -pgid`) leaves the guardian
       to clean up after the server. SIGCHLD stays at its default, for the status. */
    struct sigaction ignore = {.sa_handler = SIG_IGN};
    for (int sig = 1; sig < NSIG; sig++)
        if (sig != SIGCHLD) (void)sigaction(sig, &ignore, NULL); /* KILL, STOP: refused */
    sigprocmask(SIG_SETMASK, &none, NULL);
    int status;
    while (waitpid(server, &status, 0) < 0)
        if (errno != EINTR) _exit(1);
    /* An exit is the server's own: it unmounted and cleaned up (0), or it never mounted
       and its launcher cleans up (1). A signal left the mount dead. */
    if (WIFSIGNALED(status)) remove_when_unused(dir, mnt);
    _exit(0);
}

struct stopper {
    sigset_t signals;
    void (*stop)(void *);
    void *arg;
};

static void *wait_for_stop(void *arg) {
    struct stopper *s = arg;
    int sig;
    while (sigwait(&s->signals, &sig)) continue;
    s->stop(s->arg);
    return NULL;
}

int stop_on_signals(void (*stop)(void *), void *arg) {
    static struct stopper s;
    s.stop = stop;
    s.arg = arg;
    sigemptyset(&s.signals);
    sigaddset(&s.signals, SIGTERM);
    sigaddset(&s.signals, SIGINT);
    sigaddset(&s.signals, SIGHUP);
    /* Blocked here, and so in every thread started from now on: only sigwait receives
       them, and no FUSE worker or watcher is interrupted. The default action, not an
       inherited SIG_IGN (nohup), so they are delivered at all. */
    pthread_sigmask(SIG_BLOCK, &s.signals, NULL);
    struct sigaction dfl = {.sa_handler = SIG_DFL};
    sigaction(SIGTERM, &dfl, NULL);
    sigaction(SIGINT, &dfl, NULL);
    sigaction(SIGHUP, &dfl, NULL);
    pthread_t thread;
    return pthread_create(&thread, NULL, wait_for_stop, &s);
}
