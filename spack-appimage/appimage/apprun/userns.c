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
 *   ns        "PID WORLD APPDIR": the holder's PID, where it was made (the boot, PID
 *             and mount namespaces and root directory of the launch that started it)
 *             and the AppDir it shows (device and inode); the holder keeps an
 *             exclusive lock on it while it lives
 *   ns.users  every process in the view holds a shared lock (inherited by its children,
 *             like the runtime's "users"); the holder waits for an exclusive one, then
 *             removes both files and leaves
 *
 * A launcher takes an exclusive lock on the directory itself while it looks for a
 * holder or starts one, so two launchers never make two namespaces. It joins a holder
 * only if it can take its shared lock on ns.users without waiting (else that holder is
 * leaving), the holder still holds ns (else it died) and shows the same AppDir (else
 * its mount died and was made again: it is replaced). It opens the holder's namespaces
 * and root before that check, so a recycled PID is never joined. A launch from another
 * world sharing the directory (a container or chroot with the same /tmp, another boot
 * or node through a shared $TMPDIR) gets a view of its own instead. Joining is two
 * setns calls and a chroot to the holder's root (setns would leave a chroot); the
 * entry's exec then drops the capabilities the user namespace gave.
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

/* Where this process runs, as "BOOT:PIDNS:MNTNS:ROOTDEV:ROOTINO" into `out`. */
static void world_of(char *out, size_t cap) {
    char boot[40] = "?";
    struct stat pid_ns, mnt_ns, root;
    int fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = read(fd, boot, sizeof boot - 1);
        boot[n > 0 ? n : 0] = '\0';
        boot[strcspn(boot, "\n")] = '\0';
        close(fd);
    }
    if (stat("/proc/self/ns/pid", &pid_ns)) pid_ns.st_ino = 0;
    if (stat("/proc/self/ns/mnt", &mnt_ns)) mnt_ns.st_ino = 0;
    if (stat("/", &root)) root.st_dev = root.st_ino = 0;
    snprintf(out, cap, "%s:%lu:%lu:%lu:%lu", boot, (unsigned long)pid_ns.st_ino,
             (unsigned long)mnt_ns.st_ino, (unsigned long)root.st_dev,
             (unsigned long)root.st_ino);
}

/* The AppDir's identity, "DEV:INO", into `out`. */
static void appdir_id(const char *appdir, char *out, size_t cap) {
    struct stat st;
    if (stat(appdir, &st)) st.st_dev = st.st_ino = 0;
    snprintf(out, cap, "%lu:%lu", (unsigned long)st.st_dev, (unsigned long)st.st_ino);
}

/* `fd`, moved to 3 or above: a lock the entry inherits must not become its stdin. */
static int above_stdio(int fd) {
    if (fd < 0 || fd > 2) return fd;
    int moved = fcntl(fd, F_DUPFD, 3);
    close(fd);
    return moved;
}

/* The holder: makes the namespace and the view, reports "ok" or the reason on `report`,
   then, if `dir` >= 0 (shared), publishes itself and waits for the last user to leave;
   else (private) waits for the launcher to close `done`. Never returns. */
static void hold(const struct store_table *table, const char *appdir, int dir, int report,
                 int done) {
    char why[PATH_MAX + 128] = "ok", world[160], shown[48], record[256];
    int ns = -1, users = -1, keep[] = {dir, report, done};
    close_others(keep, 3);
    /* Not the caller's terminal or pipes: `$(app)` must not wait for the holder. */
    int null = open("/dev/null", O_RDWR);
    for (int fd = 0; null >= 0 && fd < 3; fd++) dup2(null, fd);
    if (null > 2) close(null);
    if (dir >= 0) { /* a lock of its own on the directory, not the launcher's */
        int own = openat(dir, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        close(dir);
        dir = own;
    }
    world_of(world, sizeof world); /* before unshare: the launch's own */
    appdir_id(appdir, shown, sizeof shown);
    /* An empty directory for a new root, when a prefix has no directory on the node: in
       the runtime's directory of the image, else a temporary one; removed once used. */
    char base[PATH_MAX] = "", *name = NULL;
    int parent = -1;
    if (store_needs_root(table)) {
        const char *tmp = getenv("TMPDIR");
        snprintf(base, sizeof base, "%s", appdir);
        *strrchr(base, '/') = '\0';
        if (dir >= 0) {
            parent = dup(dir);
            strcat(base, "/view");
            (void)unlinkat(dir, "view", AT_REMOVEDIR); /* a killed holder's */
            if (mkdirat(dir, "view", 0700)) base[0] = '\0';
        } else {
            snprintf(base, sizeof base, "%s/spack-appimage-view-XXXXXX", tmp && *tmp ? tmp : "/tmp");
            if (!mkdtemp(base)) base[0] = '\0';
        }
        if (*base) {
            name = strrchr(base, '/');
            *name = '\0';
            if (parent < 0) parent = open(base, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            *name++ = '/';
        }
    }
    if (!unshare_namespaces(why, sizeof why))
        (void)store_mount_all(table, appdir, *base ? base : NULL, why, sizeof why);
    if (name) {
        (void)umount2(base, MNT_DETACH); /* a failed view's; not mounted once it is the root */
        (void)unlinkat(parent, name, AT_REMOVEDIR);
    }
    if (parent >= 0) close(parent);
    if (!strcmp(why, "ok") && dir >= 0) {
        snprintf(record, sizeof record, "%d %s %s\n", (int)getpid(), world, shown);
        (void)unlinkat(dir, "ns", 0);
        (void)unlinkat(dir, "ns.users", 0);
        ns = openat(dir, "ns", O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
        /* read-write: an exclusive lock on NFS (fcntl locks underneath) needs it */
        users = openat(dir, "ns.users", O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                       0600);
        if (ns < 0 || users < 0 || flock(ns, LOCK_EX) ||
            write(ns, record, strlen(record)) != (ssize_t)strlen(record))
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

/* A holder's namespaces and root directory, opened. */
struct view {
    int user, mnt, root;
};

/* Opens the namespaces of process `pid` (its user namespace unless this is root) and
   its root directory. 0, or -1 with nothing left open. */
static int open_view(long pid, struct view *v) {
    char path[64];
    *v = (struct view){-1, -1, -1};
    snprintf(path, sizeof path, "/proc/%ld/ns/user", pid);
    if (geteuid() != 0 && (v->user = open(path, O_RDONLY | O_CLOEXEC)) < 0) return -1;
    snprintf(path, sizeof path, "/proc/%ld/ns/mnt", pid);
    v->mnt = open(path, O_RDONLY | O_CLOEXEC);
    snprintf(path, sizeof path, "/proc/%ld/root", pid);
    v->root = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (v->mnt >= 0 && v->root >= 0) return 0;
    if (v->user >= 0) close(v->user);
    if (v->mnt >= 0) close(v->mnt);
    if (v->root >= 0) close(v->root);
    return -1;
}

static void close_view(struct view *v) {
    if (v->user >= 0) close(v->user);
    close(v->mnt);
    close(v->root);
}

/* Whether the namespace `fd` is this process's own of that `kind`. */
static int is_own(int fd, const char *kind) {
    char path[32];
    struct stat theirs, ours;
    snprintf(path, sizeof path, "/proc/self/ns/%s", kind);
    return !fstat(fd, &theirs) && !stat(path, &ours) && theirs.st_ino == ours.st_ino &&
           theirs.st_dev == ours.st_dev;
}

/* Enters the view `v` (closing it): its namespaces (those this process is not already
   in: a launch from inside the view) and its root. */
static int enter(struct view *v, char *why, size_t cap) {
    int rc = 0;
    if (v->user >= 0 && !is_own(v->user, "user") && setns(v->user, CLONE_NEWUSER))
        rc = store_fail(why, cap, "cannot join the view's user namespace: %s", strerror(errno));
    else if (!is_own(v->mnt, "mnt") && setns(v->mnt, CLONE_NEWNS))
        rc = store_fail(why, cap, "cannot join the view's mount namespace: %s", strerror(errno));
    else if (fchdir(v->root) || chroot("."))
        rc = store_fail(why, cap, "cannot enter the view's root: %s", strerror(errno));
    close_view(v);
    return rc;
}

/* What find_holder found. */
enum { JOINED, NO_HOLDER, OTHER_WORLD };

/* The live holder of `dir` for this world and AppDir (JOINED: its view `v` is open, to
   enter, and `users` is the shared lock this process keeps, which keeps it there); none,
   or one leaving, dead or showing a dead mount (NO_HOLDER); or one made in another
   world (OTHER_WORLD). */
static int find_holder(int dir, const char *appdir, struct view *v, int *users) {
    char text[256] = "", world[160], theirs[160] = "", shown[48], their_dir[48] = "";
    long pid = 0;
    int alive = 0, found = NO_HOLDER;
    int ns = openat(dir, "ns", O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    *users = above_stdio(openat(dir, "ns.users", O_RDONLY | O_NOFOLLOW));
    if (ns >= 0 && read(ns, text, sizeof text - 1) > 0 &&
        sscanf(text, "%ld %159s %47s", &pid, theirs, their_dir) == 3) {
        world_of(world, sizeof world);
        appdir_id(appdir, shown, sizeof shown);
        if (strcmp(world, theirs)) {
            found = OTHER_WORLD;
        } else if (*users >= 0 && !strcmp(shown, their_dir) && !open_view(pid, v)) {
            alive = !flock(*users, LOCK_SH | LOCK_NB) && flock(ns, LOCK_SH | LOCK_NB) &&
                    errno == EWOULDBLOCK;
            if (!alive) close_view(v);
        }
    }
    if (ns >= 0) close(ns);
    if (alive) found = JOINED;
    if (found != JOINED && *users >= 0) close(*users);
    return found;
}

/* Starts a holder and, for a private view (`dir` -1), joins it; a shared one
   (`dir` the runtime's directory) is found and joined by join_shared. 0, or -1 with
   why. */
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
            pid_t holder = fork();
            if (holder != 0) _exit(holder < 0); /* the launcher reads the pipe's end */
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
    struct view v;
    if (child < 0) {
        rc = store_fail(why, cap, "fork: %s", strerror(errno));
    } else if (n <= 0 || strcmp(answer, "ok")) {
        rc = store_fail(why, cap, "%s", n > 0 ? answer : "the view's holder died");
    } else if (dir < 0) {
        rc = open_view(child, &v) ? store_fail(why, cap, "cannot open the view's namespaces: "
                                              "%s", strerror(errno)) : enter(&v, why, cap);
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

/* Joins the image's shared view in the runtime's directory `dir`, starting its holder
   if there is none: 0, or -1 with why. */
static int join_shared(const struct store_table *table, const char *appdir, int dir,
                       char *why, size_t cap) {
    struct view v;
    int users, found;
    if (flock(dir, LOCK_EX)) return store_fail(why, cap, "cannot lock the image's directory: "
                                               "%s", strerror(errno));
    found = find_holder(dir, appdir, &v, &users);
    if (found == NO_HOLDER && !start_holder(table, appdir, dir, why, cap)) {
        found = find_holder(dir, appdir, &v, &users);
        if (found != JOINED) store_fail(why, cap, "the view's holder left at once");
    }
    /* Entered without the directory's lock: holding ns.users, the holder stays. */
    flock(dir, LOCK_UN);
    if (found == OTHER_WORLD) /* the directory is another world's: a view of our own */
        return start_holder(table, appdir, -1, why, cap);
    if (found == JOINED && enter(&v, why, cap)) {
        close(users);
        return -1;
    }
    return found == JOINED ? 0 : -1;
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
    /* by every launch, joiners too: whether it may run in the view from where it is */
    int dir = -1, rc = store_check(table, have_cwd ? cwd : NULL, why, sizeof why);
    if (!rc && (dir = runtime_dir(appdir)) >= 0) {
        rc = join_shared(table, appdir, dir, why, sizeof why);
        close(dir);
    } else if (!rc) {
        rc = start_holder(table, appdir, -1, why, sizeof why);
    }
    if (rc) {
        say("not showing the store paths (running as relocated): ", why);
    } else {
        /* setns and chroot made / the cwd: back to where the launch was made, by its path
           as the view shows it, else the directory itself (a name no longer reachable) */
        if ((!have_cwd || chdir(cwd)) && (here < 0 || fchdir(here)))
            say("cannot return to the working directory ", have_cwd ? cwd : "");
        say("showing the bundled prefixes at their store paths", "");
    }
    if (here >= 0) close(here);
}
