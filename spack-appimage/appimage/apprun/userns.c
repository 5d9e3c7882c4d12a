/*
 * The namespace of the store view (store.h): made once per image per node, joined by
 * every later process of the image.
 *
 * Why shared: the ranks of an MPI job on one node read each other's memory directly
 * (Open MPI's vader/sm single copy through CMA, process_vm_readv), which the kernel
 * allows between processes of one user in one user namespace as on the host. One
 * namespace for all of them also means the mounts are made once per node, not once per
 * rank.
 *
 * How: a holder process makes the namespace (a user namespace mapping only the caller's
 * uid and gid to themselves, setgroups denied, and a mount namespace; real root needs
 * only the mount namespace), makes the mounts (store.c) and stays, holding it, until
 * the image's last process on the node has left. Its files live in the runtime's
 * directory of the image (the parent of $APPDIR, private to the user: privdir.c), next
 * to the runtime's own lock files:
 *
 *   ns        the holder's PID; the holder keeps an exclusive lock on it while it lives
 *   ns.users  every process in the view holds a shared lock (inherited by its children,
 *             like the runtime's "users"); the holder waits for an exclusive one, then
 *             removes both files and leaves
 *
 * A launcher takes an exclusive lock on the directory itself while it looks for a
 * holder or starts one, so two launchers never make two namespaces. It joins a holder
 * only if it can take its shared lock on ns.users without waiting (else that holder is
 * leaving) and the holder still holds ns (else it died). It opens the holder's
 * namespaces before that check, so a recycled PID is never joined. Joining is two setns
 * calls; the entry's exec then drops the capabilities the user namespace gave.
 *
 * Without a runtime directory (an AppDir run directly, as after --appimage-extract) the
 * namespace is private to this launch: the holder leaves as soon as the launcher joined.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <dirent.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "store.h"

static int verbose;
static const char *image_name = "AppRun";

static void say(const char *format, const char *detail) {
    if (verbose) fprintf(stderr, "%s: %s%s\n", image_name, format, detail);
}

static int write_file(const char *path, const char *text) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = write(fd, text, strlen(text));
    int error = errno;
    close(fd);
    errno = error;
    return n == (ssize_t)strlen(text) ? 0 : -1;
}

/* Closes every descriptor but `keep` (and 0, 1, 2): the holder must not keep the
   runtime's "users" lock, or any other, of the launch that started it. */
static void close_others(const int *keep, int n) {
    DIR *fds = opendir("/proc/self/fd");
    if (!fds) return;
    for (struct dirent *e; (e = readdir(fds));) {
        int fd = atoi(e->d_name), kept = fd < 3 || fd == dirfd(fds);
        for (int i = 0; i < n; i++) kept |= fd == keep[i];
        if (!kept && e->d_name[0] != '.') close(fd);
    }
    closedir(fds);
}

/* Puts the calling process in new namespaces with the caller's ids. */
static int unshare_namespaces(char *why, size_t cap) {
    uid_t uid = geteuid();
    gid_t gid = getegid();
    char map[64];
    if (uid == 0) {
        if (unshare(CLONE_NEWNS))
            return store_fail(why, cap, "cannot make a mount namespace: %s", strerror(errno));
    } else {
        if (unshare(CLONE_NEWUSER | CLONE_NEWNS))
            return store_fail(why, cap, "this node refuses user namespaces (%s)",
                              errno == ENOSPC ? "user.max_user_namespaces is reached or 0"
                              : errno == EPERM ? "not allowed for users: a sysctl, AppArmor, "
                                                 "or a container's seccomp policy"
                                               : strerror(errno));
        snprintf(map, sizeof map, "%u %u 1\n", (unsigned)uid, (unsigned)uid);
        if (write_file("/proc/self/uid_map", map))
            return store_fail(why, cap, "cannot map uid %u in a user namespace: %s",
                            (unsigned)uid, strerror(errno));
        snprintf(map, sizeof map, "%u %u 1\n", (unsigned)gid, (unsigned)gid);
        if (write_file("/proc/self/setgroups", "deny") || write_file("/proc/self/gid_map", map))
            return store_fail(why, cap, "cannot map gid %u in a user namespace: %s",
                            (unsigned)gid, strerror(errno));
    }
    /* Nothing mounted here shows on the host; the host's unmounts still show here. */
    if (mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL))
        return store_fail(why, cap, "cannot make the mounts private (a user namespace that "
                        "may not mount: AppArmor or a container's policy): %s",
                        strerror(errno));
    return 0;
}

/* Whether `mountpoint` is where a spack-appimage runtime mounts an image:
   .../spack-appimage-<uid>[.<hex>]/<image>/mnt (runtime/privdir.c). */
static int is_image_mount(const char *mountpoint) {
    const char *end = mountpoint + strlen(mountpoint), *c = end;
    int slashes = 0;
    if (end - mountpoint < 4 || strcmp(end - 4, "/mnt")) return 0;
    while (c > mountpoint && slashes < 3) slashes += *--c == '/';
    return slashes == 3 && !strncmp(c, "/spack-appimage-", 16);
}

/* The new namespace holds a copy of every mount, and a FUSE server's session ends only
   when no namespace has a copy of its mount: a copy of another image's mount here would
   keep that image's server running after it unmounts on the host, until this holder
   leaves. Those copies are detached, never the image's own (the view's processes run
   from it) nor any other FUSE mount (CVMFS, a user's sshfs), which the entry may read.
   In a user namespace the copies are locked to it and cannot be detached: there the
   host's unmount takes them away where the host's mounts propagate (shared, as systemd
   makes them; this namespace's copies are its slaves). */
static void detach_other_images(const char *appdir) {
    FILE *table = fopen("/proc/self/mountinfo", "re");
    char line[4 * PATH_MAX], point[PATH_MAX];
    if (!table) return;
    while (fgets(line, sizeof line, table)) {
        char *fields = strstr(line, " - "), *escaped = NULL;
        if (!fields || strncmp(fields + 3, "fuse", 4)) continue;
        /* id parent major:minor root mountpoint ...: the fifth field, octal-escaped */
        strtok(line, " ");
        for (int i = 0; i < 4; i++) escaped = strtok(NULL, " ");
        if (!escaped) continue;
        size_t n = 0;
        for (const char *c = escaped; *c && n < sizeof point - 1; c++) {
            unsigned octal;
            if (c[0] == '\\' && sscanf(c + 1, "%3o", &octal) == 1) point[n++] = (char)octal, c += 3;
            else point[n++] = *c;
        }
        point[n] = '\0';
        if (is_image_mount(point) && strcmp(point, appdir)) (void)umount2(point, MNT_DETACH);
    }
    fclose(table);
}

/* The holder: makes the namespace and the view, reports "ok" or the reason on `report`,
   then, if `dir` >= 0 (shared), publishes itself and waits for the last user to leave;
   else (private) waits for the launcher to close `done`. Never returns. */
static void hold(const struct store_table *table, const char *appdir, int dir, int report,
                 int done) {
    char why[PATH_MAX + 128] = "ok";
    int ns = -1, users = -1, keep[] = {dir, report, done};
    close_others(keep, 3);
    if (dir >= 0) { /* a lock of its own on the directory, not the launcher's */
        int own = openat(dir, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        close(dir);
        dir = own;
    }
    if (!unshare_namespaces(why, sizeof why) && !store_mount_all(table, appdir, why, sizeof why))
        detach_other_images(appdir);
    if (!strcmp(why, "ok") && dir >= 0) {
        char pid[32];
        snprintf(pid, sizeof pid, "%d\n", (int)getpid());
        (void)unlinkat(dir, "ns", 0);
        (void)unlinkat(dir, "ns.users", 0);
        ns = openat(dir, "ns", O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        users = openat(dir, "ns.users", O_RDONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                       0600);
        if (ns < 0 || users < 0 || flock(ns, LOCK_EX) ||
            write(ns, pid, strlen(pid)) != (ssize_t)strlen(pid))
            snprintf(why, sizeof why, "cannot publish the view's namespace: %s", strerror(errno));
    }
    ssize_t n = write(report, why, strlen(why) + 1);
    close(report);
    if (n < 0 || strcmp(why, "ok")) _exit(1);
    if (dir < 0) {
        char byte;
        while (read(done, &byte, 1) < 0 && errno == EINTR) continue;
        _exit(0);
    }
    /* The launcher that started it holds the directory until it holds ns.users too. */
    while (flock(dir, LOCK_EX) && errno == EINTR) continue;
    flock(dir, LOCK_UN);
    /* Until no process of the view is left; then unlinks the two files, if still its. */
    while (flock(users, LOCK_EX) && errno == EINTR) continue;
    struct stat held, named;
    while (flock(dir, LOCK_EX) && errno == EINTR) continue;
    if (!fstat(ns, &held) && !fstatat(dir, "ns", &named, AT_SYMLINK_NOFOLLOW) &&
        held.st_ino == named.st_ino && held.st_dev == named.st_dev) {
        unlinkat(dir, "ns", 0);
        unlinkat(dir, "ns.users", 0);
    }
    _exit(0);
}

/* Opens the namespaces of process `pid`: the user namespace (unless this is root) and
   the mount namespace. */
static int open_namespaces(long pid, int *user, int *mnt) {
    char path[64];
    *user = -1;
    snprintf(path, sizeof path, "/proc/%ld/ns/user", pid);
    if (geteuid() != 0 && (*user = open(path, O_RDONLY | O_CLOEXEC)) < 0) return -1;
    snprintf(path, sizeof path, "/proc/%ld/ns/mnt", pid);
    if ((*mnt = open(path, O_RDONLY | O_CLOEXEC)) < 0) {
        if (*user >= 0) close(*user);
        return -1;
    }
    return 0;
}

static int join(int user, int mnt, char *why, size_t cap) {
    int rc = 0;
    if (user >= 0 && setns(user, CLONE_NEWUSER))
        rc = store_fail(why, cap, "cannot join the view's user namespace: %s", strerror(errno));
    else if (setns(mnt, CLONE_NEWNS))
        rc = store_fail(why, cap, "cannot join the view's mount namespace: %s", strerror(errno));
    if (user >= 0) close(user);
    close(mnt);
    return rc;
}

/* The live holder of `dir`, joined: 1; 0 when there is none (or it is leaving); -1 with
   why when joining failed. On 1, `users` is the shared lock this process keeps. */
static int join_holder(int dir, int *users, char *why, size_t cap) {
    char text[32] = "";
    int user = -1, mnt = -1, alive = 0;
    int ns = openat(dir, "ns", O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    *users = openat(dir, "ns.users", O_RDONLY | O_NOFOLLOW);
    if (ns >= 0 && *users >= 0 && read(ns, text, sizeof text - 1) > 0 &&
        !open_namespaces(strtol(text, NULL, 10), &user, &mnt)) {
        alive = !flock(*users, LOCK_SH | LOCK_NB) && flock(ns, LOCK_SH | LOCK_NB) &&
                errno == EWOULDBLOCK;
        if (!alive && user >= 0) close(user);
        if (!alive) close(mnt);
    }
    if (ns >= 0) close(ns);
    if (!alive) {
        if (*users >= 0) close(*users);
        return 0;
    }
    return join(user, mnt, why, cap) ? -1 : 1;
}

/* Starts a holder and joins it; `dir` is the runtime's directory, or -1 for a private
   view. 0, or -1 with why. */
static int start_holder(const struct store_table *table, const char *appdir, int dir,
                        char *why, size_t cap) {
    int report[2], done[2] = {-1, -1};
    if (pipe2(report, O_CLOEXEC) || (dir < 0 && pipe2(done, O_CLOEXEC)))
        return store_fail(why, cap, "pipe: %s", strerror(errno));
    pid_t child = fork();
    if (child == 0) {
        close(report[0]);
        if (done[1] >= 0) close(done[1]);
        if (dir >= 0) { /* outlives this launch: its own session, not this process's child */
            setsid();
            if (fork() > 0) _exit(0);
        }
        signal(SIGPIPE, SIG_IGN);
        if (chdir("/")) _exit(1);
        hold(table, appdir, dir, report[1], done[0]);
    }
    close(report[1]);
    if (done[0] >= 0) close(done[0]);
    char answer[PATH_MAX + 128] = "";
    ssize_t n = child < 0 ? -1 : read(report[0], answer, sizeof answer - 1);
    while (n < 0 && errno == EINTR) n = read(report[0], answer, sizeof answer - 1);
    close(report[0]);
    int rc = 0;
    if (child < 0) {
        rc = store_fail(why, cap, "fork: %s", strerror(errno));
    } else if (n <= 0 || strcmp(answer, "ok")) {
        rc = store_fail(why, cap, "%s", n > 0 ? answer : "the view's holder died");
    } else if (dir < 0) {
        int user, mnt;
        rc = open_namespaces(child, &user, &mnt) ? store_fail(why, cap, "cannot open the view's "
                             "namespaces: %s", strerror(errno)) : join(user, mnt, why, cap);
    }
    if (done[1] >= 0) close(done[1]);
    if (child > 0) waitpid(child, NULL, 0);
    return rc;
}

/* The runtime's directory of this image (the parent of $APPDIR when $APPDIR is the
   AppDir of this AppRun and holds the runtime's "users" file), opened; else -1. */
static int runtime_dir(const char *appdir) {
    const char *env = getenv("APPDIR");
    char real[PATH_MAX], parent[PATH_MAX];
    if (!env || !realpath(env, real) || strcmp(real, appdir)) return -1;
    snprintf(parent, sizeof parent, "%s", appdir);
    *strrchr(parent, '/') = '\0';
    int dir = open(*parent ? parent : "/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir >= 0 && faccessat(dir, "users", F_OK, AT_SYMLINK_NOFOLLOW)) {
        close(dir);
        return -1;
    }
    return dir;
}

void store_view(const struct store_table *table, const char *appdir, const char *image) {
    const char *mode = getenv("APPIMAGE_STORE_VIEW");
    char cwd[PATH_MAX], why[PATH_MAX + 128] = "";
    verbose = getenv("VERBOSE") != NULL;
    image_name = image;
    if (!table->n) return;
    if (mode && !strcmp(mode, "never")) {
        say("not showing the store paths: APPIMAGE_STORE_VIEW=never", "");
        return;
    }
    int have_cwd = getcwd(cwd, sizeof cwd) != NULL;
    int here = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
    int dir = runtime_dir(appdir), users = -1, rc = 1; /* users: kept, for the entry */
    if (dir >= 0) {
        flock(dir, LOCK_EX);
        rc = join_holder(dir, &users, why, sizeof why);
        if (rc == 0) {
            if (!(rc = start_holder(table, appdir, dir, why, sizeof why)))
                rc = join_holder(dir, &users, why, sizeof why) == 1 ? 0 : -1;
            if (rc && !*why) snprintf(why, sizeof why, "the view's holder left at once");
        } else if (rc == 1) {
            rc = 0;
        }
        flock(dir, LOCK_UN);
        close(dir);
    } else {
        rc = start_holder(table, appdir, -1, why, sizeof why);
    }
    if (rc) {
        say("not showing the store paths (running as relocated): ", why);
    } else {
        /* setns made / the cwd: back to where the launch was made, by its path as the
           view shows it, else the directory itself (a name no longer reachable) */
        if ((!have_cwd || chdir(cwd)) && (here < 0 || fchdir(here)))
            say("cannot return to the working directory ", have_cwd ? cwd : "");
        say("showing the bundled prefixes at their store paths", "");
    }
    if (here >= 0) close(here);
}
